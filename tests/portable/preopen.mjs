// jco's `run` gives a component no folder: this grants it the folder it runs in, as
// wasmtime's `--dir .` does, and makes stdout's flush real (blocking-stdio.mjs).
import './blocking-stdio.mjs';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';

_setPreopens({ '.': process.cwd() });
