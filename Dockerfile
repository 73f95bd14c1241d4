# One image, three roles:
#   * the Dataflow Flex Template launcher (gcloud dataflow flex-template build --image IMAGE),
#   * the SDK worker container of Dataflow (--sdk_container_image IMAGE, or the template parameter
#     sdk_container_image=IMAGE),
#   * the SDK harness environment of a portable runner such as Flink
#     (--environment_type DOCKER --environment_config IMAGE).
# The job and all its dependencies are installed, so neither the launcher nor the workers stage or install
# anything at run time. See templates/README.md for the build and run commands.
#
# BEAM_VERSION must be the version that submits the job (setup.py's BEAM_VERSION): the workers' boot
# program and SDK have to match the SDK that built the pipeline. tests/test_deploy.py checks it.
ARG BEAM_VERSION=2.77.0
# Tag of Google's Python 3.11 launcher image; use the one marked "latest" on
# https://cloud.google.com/dataflow/docs/reference/flex-templates-base-images (--build-arg LAUNCHER_TAG=...).
ARG LAUNCHER_TAG=20260122_RC00

# Only the Flex Template launcher binary is taken from this image.
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:${LAUNCHER_TAG} AS launcher

# Build stage: a wheel of the job, with its C extension compiled (the Beam SDK image is based on the full
# Debian python image, which has a C compiler).
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS wheel
WORKDIR /src
COPY setup.py ./
COPY beam_job/ beam_job/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
COPY --from=wheel /wheels/ /tmp/wheels/

# Install the job with its pinned dependencies over the SDK image's, then fail the build if the result
# has conflicts, if pip replaced the image's Beam with another version, or if the native frame writer
# was not built.
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && pip check \
    && python -c "import sys, apache_beam, beam_job._fastframes; v = apache_beam.__version__; sys.exit(0 if v == sys.argv[1] else 'image has Beam ' + v + ', expected ' + sys.argv[1])" "${BEAM_VERSION}" \
    && pip freeze

WORKDIR /template
COPY templates/main.py templates/metadata.json ./

# The package is installed, so no FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE / _SETUP_FILE: launching stages
# nothing and installs nothing.
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py

# The Beam SDK boot program, so that the image also works as the workers' SDK container.
ENTRYPOINT ["/opt/apache/beam/boot"]
