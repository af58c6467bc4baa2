# syntax=docker/dockerfile:1
# The sluice controller image (`docker build -t sluice .` at the repository root). The Helm chart runs it as
# `sluice controller ...` and its CRD hook Job as `sluice crds apply`.
#
# The base is pinned by version, the newest Python 3.11 patch release known when this was written. Pin it by digest
# as well where you build (`docker buildx imagetools inspect python:3.11.17-slim-bookworm` prints it, then
# --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:...): no registry was reachable to look the digest
# up, and a digest that cannot be checked is worse than none. Both stages must use the same image, because the
# virtualenv built in the first one runs, unchanged, on the second one's interpreter.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from. rollout/crds is a symlink to charts/sluice/crds, the CRDs' single source of
# truth; the wheel gets them as files (package-data in pyproject.toml) for `sluice crds apply`.
COPY pyproject.toml README.md ./
COPY charts/sluice/crds/ charts/sluice/crds/
COPY analysis/ analysis/
COPY strategies/ strategies/
COPY rollout/ rollout/
# The wheel, then a virtualenv with it and its runtime dependencies (wheels from PyPI: no compiler needed), then
# pip and setuptools out of the virtualenv; it must be able to find its CRDs.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/sluice \
 && /opt/sluice/bin/pip install /wheels/sluice-*.whl \
 && /opt/sluice/bin/pip uninstall --yes pip setuptools \
 && /opt/sluice/bin/python -c "from rollout.installing import packaged_crds; packaged_crds()"

FROM ${PYTHON_IMAGE}
# Nothing is installed at run time: no pip, setuptools or wheel in the image either.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && rm -rf /root/.cache
COPY --from=builder /opt/sluice /opt/sluice
# Read-only root filesystem friendly: the bytecode was compiled when the virtualenv was built, and nothing is written
# at run time (a kubeconfig with embedded certificates would be, to a temporary file: mount an emptyDir at /tmp then).
ENV PATH=/opt/sluice/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user (the "nonroot" of distroless images), so `runAsNonRoot: true` can verify it.
USER 65532:65532
# The operator API (--api-port) and the plain-HTTP probe and metrics listener (--metrics-port).
EXPOSE 8080 9090
ENTRYPOINT ["sluice"]
CMD ["controller"]
