# One image for every keytrail role; docker-compose.yml picks the role by command.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY events ./events
COPY broker ./broker
COPY audit ./audit
COPY sinks ./sinks
COPY ingest ./ingest
COPY workers ./workers
COPY authapi ./authapi
COPY keytrail ./keytrail
RUN pip install --no-cache-dir . && useradd --system --home /data keytrail && mkdir -p /data && chown keytrail /data
USER keytrail
ENV KEYTRAIL_DATA_DIR=/data
ENTRYPOINT ["keytrail"]
