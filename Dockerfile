# Patron's container image. Build from the repository root:
#   docker build -t patron:0.1.0 .
# The tag should equal the chart's appVersion (charts/patron/Chart.yaml), which the chart uses by default.
#
# Stage 1 builds the patron wheel and installs it, with its dependencies pinned by constraints.txt,
# into a virtual environment (then drops pip and setuptools from it). Stage 2 is a clean slim image
# with only that environment: no build tools, no pip, no sources.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator/ operator/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/patron \
 && /opt/patron/bin/pip install --constraint constraints.txt /wheels/patron-*.whl \
 && /opt/patron/bin/patron --help >/dev/null \
 && /opt/patron/bin/python -m pip uninstall --quiet --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="patron" \
      org.opencontainers.image.description="Kubernetes operator that enforces customer-impact SLOs" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user with a fixed numeric id: Kubernetes can verify runAsNonRoot against a numeric USER,
# and Python's getpass (used by Kopf outside a pod) finds the name.
RUN groupadd --system --gid 10001 patron \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin patron
COPY --from=build /opt/patron /opt/patron
ENV PATH=/opt/patron/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 8080: Kopf's liveness endpoint (/healthz); 9464: Patron's own metrics (/metrics).
EXPOSE 8080 9464
ENTRYPOINT ["patron"]
CMD ["run"]
