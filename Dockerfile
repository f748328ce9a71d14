# Build a static binary, then ship it alone: copy it into your own image with
#   COPY --from=etcd-config-dispenser /bin/etcd-config-dispenser /bin/etcd-config-dispenser
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /bin/etcd-config-dispenser .

FROM scratch
COPY --from=build /bin/etcd-config-dispenser /bin/etcd-config-dispenser
ENTRYPOINT ["/bin/etcd-config-dispenser"]
