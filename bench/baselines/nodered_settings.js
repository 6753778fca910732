// Node-RED settings for the benchmark: no editor, no admin API, quiet log.
module.exports = {
    uiPort: parseInt(process.env.BENCH_NODERED_UI_PORT || "1880", 10),
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: process.env.BENCH_NODERED_FLOWS,
    userDir: process.env.BENCH_NODERED_USERDIR,
    credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false } },
};
