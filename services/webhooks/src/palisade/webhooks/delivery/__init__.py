"""The delivery worker: claims due deliveries with a lease, signs, POSTs through the egress
client, records every attempt and settles each delivery (retry, success, failure, disable)."""
