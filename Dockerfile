# One image for every process: worker, beat, flower and the sandbox differ only in their command
# (see docker-compose.yml). No secret is baked in: the VideoSDK secret arrives at run time as a
# file (VIDEOSDK_SECRET_FILE, a Docker secret) and everything else from the environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin recorder

# The installed packages are all the processes need, and they write nothing to disk. Celery puts
# the working directory on sys.path first: an empty root-owned one means nobody can plant a
# `worker` module there.
WORKDIR /app
USER recorder

# 5555: Flower; 8090: the sandbox API (profile "sandbox")
EXPOSE 5555 8090
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
