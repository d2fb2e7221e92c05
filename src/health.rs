//! gRPC health checking (grpc.health.v1.Health, Check and Watch) for probes: SERVING from start
//! until the drain begins, NOT_SERVING from then on, for "" (the whole server) and
//! "coprocess.Dispatcher".
//!
//! A gRPC server's shutdown waits for every open call, so a Watch stream that stayed open would
//! hold each drain for the whole grace period: when the drain starts, Watch streams send
//! NOT_SERVING and end.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use futures_util::SinkExt as _;
use grpcio::{RpcStatus, RpcStatusCode, Service, ServiceBuilder, WriteFlags};

use crate::proto::{HealthCheckResponse, ServingStatus, DISPATCHER_SERVICE, HEALTH_CHECK, HEALTH_WATCH};

#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    draining: bool,
    /// Watch streams waiting for the drain.
    watchers: Vec<Waker>,
}

impl Health {
    pub fn service(&self) -> Service {
        let (health, watched) = (self.clone(), self.clone());
        ServiceBuilder::new()
            .add_unary_handler(&HEALTH_CHECK, move |ctx, request, sink| {
                let sent = match health.status(&request.service) {
                    ServingStatus::SERVICE_UNKNOWN => sink.fail(RpcStatus::with_message(
                        RpcStatusCode::NOT_FOUND,
                        format!("unknown service {:?}", request.service),
                    )),
                    status => sink.success(response(status)),
                };
                crate::server::finish(&ctx, sent);
            })
            .add_server_streaming_handler(&HEALTH_WATCH, move |ctx, request, mut sink| {
                let health = watched.clone();
                ctx.spawn(async move {
                    let first = health.status(&request.service);
                    if first != ServingStatus::NOT_SERVING {
                        if sink.send((response(first), WriteFlags::default())).await.is_err() {
                            return;
                        }
                        health.drain_started().await;
                    }
                    let last = health.status(&request.service);
                    if sink.send((response(last), WriteFlags::default())).await.is_ok() {
                        let _ = sink.close().await;
                    }
                });
            })
            .build()
    }

    /// Turns every status to NOT_SERVING for good and tells the Watch streams.
    pub fn start_drain(&self) {
        let mut state = self.state();
        state.draining = true;
        state.watchers.drain(..).for_each(Waker::wake);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so a poisoned lock still holds a sound state.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn status(&self, service: &str) -> ServingStatus {
        match service {
            "" | DISPATCHER_SERVICE if self.state().draining => ServingStatus::NOT_SERVING,
            "" | DISPATCHER_SERVICE => ServingStatus::SERVING,
            _ => ServingStatus::SERVICE_UNKNOWN,
        }
    }

    /// Resolves once the drain has started.
    fn drain_started(&self) -> impl Future<Output = ()> + Send + 'static {
        let health = self.clone();
        std::future::poll_fn(move |context| {
            let mut state = health.state();
            if state.draining {
                Poll::Ready(())
            } else {
                state.watchers.push(context.waker().clone());
                Poll::Pending
            }
        })
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into(), ..Default::default() }
}
