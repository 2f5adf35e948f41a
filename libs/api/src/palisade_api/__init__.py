"""Generated protobuf and gRPC stubs (see tools/gen_protos.py). Do not edit."""
