//! Integration tests: the component running in the host against a real mosquitto.

mod cli;
mod cluster;
mod concurrency;
mod connect;
mod logs;
mod metadata;
mod metrics;
mod mqtt5;
mod pluggable;
mod portable;
mod proxy;
mod publish;
mod reconnect;
mod sandbox;
mod sdk;
mod sidecar;
mod subscribe;
mod support;
mod tls;
mod websocket;
