// jco's `run` gives a component no folder: this grants it the folder it runs in, as
// wasmtime's `--dir .` does.
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';

_setPreopens({ '.': process.cwd() });
