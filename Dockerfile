# syntax=docker/dockerfile:1
# Build stage: compile the Rust extension and build the wheel with maturin.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir maturin==1.16.0
WORKDIR /src
COPY Cargo.toml pyproject.toml README.md ./
COPY native native
COPY service service
COPY workers workers
RUN /opt/build/bin/maturin build --release --interpreter python3.11 --out /wheels

# Runtime stage: slim Python, the wheel and its dependencies, a non-root user.
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENSE_HOST=0.0.0.0 \
    SENSE_PORT=8000 \
    SENSE_DATA_DIR=/var/lib/sense \
    HF_HUB_OFFLINE=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
 && useradd --system --uid 10001 --home-dir /var/lib/sense --create-home sense
USER sense
WORKDIR /var/lib/sense
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["sense"]
CMD ["serve"]
