# ciotrack worker image: build the wheel with maturin (Rust + Python), run it on python:3.11-slim
# as a non-root user. The build step is `make wheel`, the same target the test suite checks.
#   docker build -t ciotrack .   &&   docker run --rm ciotrack --help
FROM rust:1-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The same target as on a laptop: a manylinux2014 wheel (maturin + zig from PyPI, in /opt/build).
RUN make wheel VENV=/opt/build WHEEL_DIR=/wheels

FROM python:3.11-slim
RUN groupadd --gid 10001 ciotrack && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ciotrack
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/ciotrack-*.whl)[fleet]" && rm -rf /wheels
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["ciotrack", "worker"]
