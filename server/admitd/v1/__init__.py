"""Generated from protos/admitd/v1 by scripts/gen_protos.py; do not edit."""
