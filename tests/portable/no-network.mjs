// As preopen.mjs, and the component may open no connection and look up no name: what a
// runtime without network permission gives it.
import './blocking-stdio.mjs';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';
import { _denyDnsLookup, _denyTcp } from '@bytecodealliance/preview2-shim/sockets';

_setPreopens({ '.': process.cwd() });
_denyTcp();
_denyDnsLookup();
