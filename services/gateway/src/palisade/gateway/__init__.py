"""The HTTP gateway: public routes from the protos' annotations, authentication at the edge."""
