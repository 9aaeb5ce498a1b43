"""Generated from the Envoy protos vendored in protos/third_party by
scripts/gen_protos.py; do not edit."""
