// Node writes to a pipe asynchronously: `write` queues what the pipe cannot take yet and
// returns, and preview2-shim's blocking flush of stdout does nothing ("no blocking flush for
// stdio in Node.js"). A line would then count as written, and its message be acknowledged,
// while it still waits in Node, and be lost with the process. Made blocking, a write
// returns once the pipe has taken every byte, as under wasmtime. (`setBlocking` is libuv's,
// on Node's pipe and TTY handles; a file is written synchronously already and has none.)
for (const stream of [process.stdout, process.stderr]) {
    stream._handle?.setBlocking?.(true);
}
