#!/bin/sh
# The `uv sync` extras of one deployment target: the image carries only that target's SDKs.
# Usage: image-extras.sh TARGET   (kubernetes | aws | azure | gcp | all)
# Kept beside app/Dockerfile; tests/infra/test_dockerfile.py checks it against pyproject.toml.
set -eu
case "${1:-}" in
  kubernetes) echo "--extra postgres --extra nats" ;;
  aws)        echo "--extra aws --extra postgres" ;;
  azure)      echo "--extra azure --extra postgres" ;;
  gcp)        echo "--extra gcp --extra postgres" ;;
  all)        echo "--all-extras" ;;
  *) echo "image-extras: unknown target '${1:-}' (kubernetes|aws|azure|gcp|all)" >&2; exit 2 ;;
esac
