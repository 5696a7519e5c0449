# Build stage: a static binary, so the runtime image needs no libc.
FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so editing the code does not re-download them.
COPY go.mod go.sum ./
RUN go mod download
# Only the directories the binary is built from: the build context also
# holds .demo/ (binaries, Prometheus data) and tools/, which the image does
# not need. internal/devstack's tests check that this list covers every
# package cmd/consul-sd-adapter imports.
COPY cmd/ cmd/
COPY consulsd/ consulsd/
COPY adapter/ adapter/
COPY sdconfig/ sdconfig/
COPY internal/ internal/
# The version data of make build (LDFLAGS in the Makefile), which make docker
# passes through docker-compose.yml. Without them the binary says "dev": this
# stage has no .git for go build to take a revision from.
ARG VERSION
ARG REVISION
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-X github.com/prometheus/common/version.Version=${VERSION} \
                -X github.com/prometheus/common/version.Revision=${REVISION} \
                -X github.com/prometheus/common/version.Branch=main \
                -X github.com/prometheus/common/version.BuildUser=docker" \
      -o /consul-sd-adapter ./cmd/consul-sd-adapter
# The directory docker-compose.yml mounts the shared "sd" volume on. Docker
# initialises an empty named volume with the owner of the image directory it
# is mounted over, so creating /sd here owned by nonroot (65532) is what lets
# the adapter, which does not run as root, write custom_sd.json into it.
RUN mkdir /sd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /consul-sd-adapter /consul-sd-adapter
COPY --from=build --chown=65532:65532 /sd /sd
USER nonroot:nonroot
EXPOSE 9841
ENTRYPOINT ["/consul-sd-adapter"]
