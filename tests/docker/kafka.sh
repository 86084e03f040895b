#!/usr/bin/env bash
# Test fixture only: a local stand-in for `apache/kafka:VERSION` (no image registry is reachable
# here) with what the compose file uses of the official image: Java 17, the broker's jars from
# Maven Central (kafka/pom.xml), /opt/kafka/bin/kafka-topics.sh and kafka-console-consumer.sh,
# and a start script that turns KAFKA_* variables into server.properties (kafka/run).
#   tests/docker/kafka.sh TAG LABEL
# Needs root, debootstrap and Maven.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tag=${1:-apache/kafka:4.1.1}
label=${2:-batchstream.standin=kafka}
version=${tag##*:}
rootfs=$(mktemp -d /tmp/standin-kafka.XXXXXX)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
debootstrap --variant=minbase --include=openjdk-17-jre-headless \
  bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
kafka="$rootfs/opt/kafka"
mkdir -p "$kafka/bin" "$kafka/config" "$kafka/libs" "$rootfs/etc/kafka/docker" "$rootfs/var/lib/kafka/data"
mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
  "-Dkafka.version=$version" "-DoutputDirectory=$kafka/libs"
install -m 0755 "$here/kafka/run" "$rootfs/etc/kafka/docker/run"
for tool in kafka-topics.sh kafka-console-consumer.sh kafka-console-producer.sh kafka-consumer-groups.sh; do
  install -m 0755 "$here/kafka/tool" "$kafka/bin/$tool"
done
install -m 0644 "$here/kafka/log4j.properties" "$here/kafka/tools-log4j.properties" "$kafka/config/"
chroot "$rootfs" useradd --no-create-home --uid 1000 appuser
chown -R 1000:1000 "$kafka/config" "$rootfs/var/lib/kafka/data"
# As the official image: runs as appuser, data under a volume, /etc/kafka/docker/run as CMD.
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
  --change 'USER appuser' \
  --change 'EXPOSE 9092' \
  --change 'VOLUME ["/var/lib/kafka/data"]' \
  --change "LABEL $label" \
  --change 'CMD ["/etc/kafka/docker/run"]' - "$tag"
