# sluice as a Nomad system job: one instance on every client node, beside
# that node's Consul agent, so local clients reach every service through
# localhost or the node's address on one fixed port per service.
#
#   nomad job validate deploy/nomad/sluice.nomad.hcl
#   nomad job run -var image=registry.example.com/sluice:0.1.0 deploy/nomad/sluice.nomad.hcl
#   nomad alloc logs -stderr -job sluice
#
# Driver: docker with network_mode = "host". An L4 proxy belongs in the
# host's network namespace: clients connect to the node's own ports without
# a NAT hop (so maglev sees their real addresses and UDP flows need no
# conntrack entries), and 127.0.0.1:8600 is the local Consul agent's DNS
# interface, as it is for a process on the host. The docker driver still
# gives the image (non-root uid 10001), a read-only root, dropped
# capabilities and resource limits. raw_exec would run the binary as the
# Nomad client's user (usually root) with no isolation at all, and is
# disabled on most clusters; exec would also do, given a sluice binary on
# every node, as artifact or host path.
#
# Ports: listener ports are reserved as static ports so that the scheduler
# refuses another job that wants them on the same node. Keep `network` in
# step with the listeners in the template below.
#
# Config changes: the template re-renders on a new job version; Nomad
# then sends SIGHUP, and sluice applies the difference without dropping a
# connection (a file with an error is logged and changes nothing).

variable "image" {
  type        = string
  description = "sluice container image (built from the repository's Dockerfile)"
  default     = "sluice:latest"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

job "sluice" {
  type        = "system"
  datacenters = var.datacenters

  # Only nodes with a Consul agent: sluice asks it for every backend.
  constraint {
    attribute = "${attr.consul.version}"
    operator  = "is_set"
  }

  # One node at a time; a node's sluice must pass its /ready check for 10s
  # before the next one is replaced. (Nomad versions without system-job
  # deployments enforce only max_parallel and stagger.)
  update {
    max_parallel     = 1
    stagger          = "10s"
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "sluice" {
    # Deregister from Consul first, then stop: clients that look sluice up
    # stop choosing this node before it drains.
    shutdown_delay = "5s"

    network {
      mode = "host"

      port "metrics" {
        static = 9910 # admin endpoint; not 9100, which node_exporter takes
      }
      port "graphite" {
        static = 2003
      }
      port "statsd" {
        static = 8125 # Nomad reserves a port for TCP and UDP alike
      }
      port "redis" {
        static = 6379
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    # Consul checks the admin endpoint from the local agent, at the node's
    # address (the host network's address, where --metrics binds below).
    service {
      provider = "consul"
      name     = "sluice"
      port     = "metrics"
      tags     = ["metrics"]

      # Readiness: 503 until every listener has its first discovery answer.
      # Until it passes, the instance is critical in Consul (left out of
      # DNS) and the deployment does not count it healthy.
      check {
        name     = "sluice ready"
        type     = "http"
        path     = "/ready"
        interval = "5s"
        timeout  = "2s"
      }

      # Liveness: a process that stops answering /healthz is restarted.
      check {
        name     = "sluice alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "sluice" {
      driver = "docker"

      config {
        image        = var.image
        network_mode = "host"
        # The image's ENTRYPOINT is /usr/local/bin/sluice.
        args = [
          "--config", "/local/sluice.toml",
          "--dns", "127.0.0.1:8600",
          # The node's address only, not 0.0.0.0: the endpoint has no
          # authentication.
          "--metrics", "${NOMAD_ADDR_metrics}",
          "--log-format", "json",
        ]
        readonly_rootfs = true
        cap_drop        = ["all"]
        # Effective only for a root process or a binary with file
        # capabilities: the image runs as uid 10001, so listeners stay on
        # ports >= 1024 unless the image is changed.
        cap_add = ["net_bind_service"]
        ulimit {
          nofile = "1048576:1048576"
        }
      }

      # SIGTERM starts the drain of shutdown_grace (20s in the template);
      # kill_timeout must cover it, and Nomad clients cap kill_timeout at
      # their max_kill_timeout (30s unless configured).
      kill_signal  = "SIGTERM"
      kill_timeout = "25s"

      env {
        RUST_LOG = "info"
      }

      template {
        destination   = "local/sluice.toml"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
          # Rendered by Nomad; edit the job, not this file. `dns` and
          # `metrics` come from the command line (--dns, --metrics).
          domain = "consul"
          refresh = "1s"
          empty_grace = "3s"
          shutdown_grace = "20s"

          [listeners.graphite]
          bind = "0.0.0.0:2003"
          service = "graphite"
          balance = "maglev"

          [listeners.statsd]
          bind = "0.0.0.0:8125"
          protocol = "udp"
          service = "statsd"
          udp_replies = false

          [listeners.redis]
          bind = "0.0.0.0:6379"
          service = "redis"
          balance = "least-conn"
          connect_timeout = "500ms"
          idle_timeout = "1h"
        EOT
      }

      resources {
        cpu    = 500 # MHz
        memory = 256 # MiB
      }
    }
  }
}
