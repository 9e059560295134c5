// pm2 runs N InferenceServer daemons on one host, one per core by default.
//
//   ./node_modules/.bin/pm2 start config/pm2/ecosystem.config.js   (from the repo root, after `make test` or `npm install`)
//   ./node_modules/.bin/pm2 status | logs | restart infer-0 | delete all
//
// Process i listens on TCP port INFER_BASE_PORT + i (default 7600 + i) and serves
// /healthz, /readyz and /metrics on INFER_HTTP_BASE_PORT + i (default 9100 + i).
// Consecutive ports rather than one shared SO_REUSEPORT port: every process stays
// addressable on its own (health checks, metrics, the bot's failover runs), and a
// client or a TCP load balancer spreads connections over the list.
const os = require("os");
const path = require("path");

const root = path.resolve(__dirname, "..", "..");
const instances = parseInt(process.env.INFER_INSTANCES || String(os.cpus().length), 10);
const basePort = parseInt(process.env.INFER_BASE_PORT || "7600", 10);
const httpBasePort = parseInt(process.env.INFER_HTTP_BASE_PORT || "9100", 10);
const config = process.env.INFER_CONFIG || path.join(root, "config", "default.yaml");
const runDir = process.env.INFER_RUN_DIR || path.join(root, "run");

module.exports = {
  apps: Array.from({ length: instances }, (_, i) => ({
    name: `infer-${i}`,
    cwd: root,
    script: path.join(root, ".venv", "bin", "python"),
    interpreter: "none",
    args: [
      "-m", "aiServer",
      "--config", config,
      "--port", String(basePort + i),
      "--http-port", String(httpBasePort + i),
      "--port-file", path.join(runDir, `infer-${i}.json`),
    ],
    env: { OMP_NUM_THREADS: "1", PYTHONUNBUFFERED: "1" },
    autorestart: true,
    restart_delay: 500,
    // SIGTERM starts the graceful drain (server.drain_timeout_s = 20 s); SIGKILL after 25 s.
    kill_timeout: 25000,
    max_memory_restart: "2G",
  })),
};
