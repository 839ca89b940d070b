# archivist run in a container: docs/operations.md#docker.
#   docker build -t archivist .
#   docker run --init -v /etc/archivist:/etc/archivist:ro -p 9464:9464 archivist
# The config is found at /etc/archivist/archivist.toml; ARCHIVIST_* variables override it
# (ARCHIVIST_HANDLES_PRIMARY=postgresql://..., for a secret kept out of the file).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# Both database drivers; an SQLite-only image can drop the extras.
RUN pip install --no-cache-dir "$(ls /wheels/archivist-*.whl)[postgresql,mysql]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/archivist archivist
USER archivist
WORKDIR /var/lib/archivist
# Metrics for Prometheus on every interface of the container (the host maps the port).
ENV ARCHIVIST_DAEMON_METRICS=0.0.0.0:9464 \
    PYTHONUNBUFFERED=1
EXPOSE 9464
# SIGTERM (docker stop) lets running tasks reach a safe point: give it time
# (docker stop -t 60) beyond [worker] shutdown_timeout.
ENTRYPOINT ["archivist"]
CMD ["run", "--log-format", "json"]
