#!/bin/sh
# Same contract as tensorflow/serving's tf_serving_entrypoint.sh, so manifests and `docker run` lines
# work unchanged against either image: extra arguments (e.g. --model_config_file=...) are appended, and
# `exec` makes the server PID 1 so `docker stop`'s SIGTERM reaches it.
exec deployer-model-server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
