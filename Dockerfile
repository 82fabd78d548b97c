# vehicle-agent container: IoT Edge module, Docker or Podman (docs/deployment.md).
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/vehicle-agent:0.1.0 --push .
# Run on a vehicle with the host's CAN interfaces, sending to IoT Hub:
#   docker run --network host -v vehicle-agent-state:/var/lib/vehicle-agent \
#     -e VEHICLE_AGENT_SINK=iothub -e VEHICLE_AGENT_IOTHUB_CONNECTION_STRING=... <image>
# A bind mount instead of the named volume must belong to uid 10001 (chown it on the host first).
#
# Reproducible: every dependency is pinned with its hashes in requirements.lock (pip-compile
# --generate-hashes from pyproject.toml; tests/test_packaging.py checks they agree), verified here.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements.lock pyproject.toml README.md LICENSE ./
COPY agent ./agent
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/vehicle-agent --shell /usr/sbin/nologin agent \
 && mkdir -p /var/lib/vehicle-agent && chown agent:agent /var/lib/vehicle-agent && chmod 0700 /var/lib/vehicle-agent
COPY --from=build /wheels /wheels
# Only the wheels built (and hash-checked) above: no index, nothing unpinned.
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/vehicle_agent-*.whl && rm -rf /wheels
COPY config /etc/vehicle-agent
COPY LICENSE /usr/share/doc/vehicle-agent/LICENSE
ENV VEHICLE_AGENT_CONFIG=/etc/vehicle-agent/agent.yaml \
    VEHICLE_AGENT_STATE_DIR=/var/lib/vehicle-agent \
    VEHICLE_AGENT_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER agent
VOLUME ["/var/lib/vehicle-agent"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["vehicle-agent", "status", "--check", "--state-dir", "/var/lib/vehicle-agent"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vehicle-agent"]
CMD ["run", "--no-progress"]
