# vehicle-agent container: IoT Edge module, Docker or Podman (docs/deployment.md).
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/vehicle-agent:0.1.0 --push .
# Run on a vehicle with the host's CAN interfaces:
#   docker run --network host -v vehicle-agent-state:/var/lib/vehicle-agent <image>
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/vehicle-agent --shell /usr/sbin/nologin agent \
 && mkdir -p /var/lib/vehicle-agent && chown agent:agent /var/lib/vehicle-agent
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config /etc/vehicle-agent
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
