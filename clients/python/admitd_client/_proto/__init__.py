"""Generated from protos/admitd/v1/admission.proto and
clients/python/protos/admitd_client/rpc_status.proto by scripts/gen_protos.py;
do not edit."""
