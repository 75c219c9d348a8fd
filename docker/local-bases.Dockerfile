# Stand-ins for Flower's official base images, for a machine that reaches no image registry
# (make docker-test builds them; see docker/README.md). Each target matches what docker/Dockerfile
# and the compose files rely on in `flwr/superlink`, `flwr/supernode` and `flwr/superexec`: the
# entrypoint, the user `app` (uid 49999) owning /app and a Python environment on PATH that it can
# install into, and the lock's flwr. Build from the repository root, with docker/wheels filled
# (`python -m flora_tools.docker_test --wheels-only`) and the Debian image imported:
#
#   docker build -f docker/local-bases.Dockerfile --network none --target superexec \
#       --build-arg DEBIAN_IMAGE=flora-local/debian:bookworm -t flora-local/superexec:1.42.0 .
ARG DEBIAN_IMAGE=flora-local/debian:bookworm

FROM ${DEBIAN_IMAGE} AS python
# The venv belongs to `app` before anything is installed into it, so later installs (the flora
# image's) need no recursive chown, which would copy every file into a new layer.
RUN useradd --uid 49999 --user-group --create-home --home-dir /home/app app \
    && python3 -m venv /python/venv \
    && mkdir /app \
    && chown -R app:app /python /app
ENV PATH=/python/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER app
WORKDIR /app
# flwr and its dependencies at the lock's versions, from the host's wheelhouse only.
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    python -m pip install --no-cache-dir --no-index --find-links /wheels \
        --constraint /tmp/requirements.lock flwr \
    && flwr --version

FROM python AS superlink
ENTRYPOINT ["flower-superlink"]

FROM python AS supernode
ENTRYPOINT ["flower-supernode"]

FROM python AS superexec
ENTRYPOINT ["flower-superexec"]
