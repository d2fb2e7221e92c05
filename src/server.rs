//! Serving: the gRPC server with coprocess.Dispatcher, health and reflection; the hand-off of each
//! call to a worker thread; its log lines; signals, key reload and the graceful drain.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use grpcio::{
    ChannelBuilder, Environment, Marshaller, MessageReader, Method, MethodType, ResourceQuota, RpcContext, RpcStatus,
    RpcStatusCode, Server, ServerBuilder, ServiceBuilder, UnarySink, UnarySinkResult,
};
use log::{info, log_enabled, warn, Level};
use protobuf::{CodedInputStream, Message as _};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::auth::{Hmac, Policy};
use crate::health::Health;
use crate::listener::{Listeners, Socket};
use crate::logging::{self, Redaction};
use crate::metrics::{self, metrics};
use crate::pool::{Pool, Unfinished};
use crate::proto::{self, Event, EventReply, Object};
use crate::settings::{self, Settings};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a hook has beside the object: the call's trace id, the HMAC keys, and the call's log.
pub struct Call {
    trace_id: Option<String>,
    pub(crate) hmac: Arc<Hmac>,
    notes: Vec<String>,
}

impl Call {
    /// The W3C trace id of the gateway's `traceparent`, when the gateway runs with OpenTelemetry.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// Adds a line to this call's log: written at INFO after the reply, labelled like the call's
    /// object line. Nothing is formatted when INFO is off.
    pub fn log(&mut self, line: fmt::Arguments) {
        if log_enabled!(Level::Info) {
            self.notes.push(line.to_string());
        }
    }
}

/// Runs the plugin server with these hooks until a signal ends it, then exits the process:
/// `dispatch` turns each Dispatch call's object into the reply, `dispatch_event` sees each event.
/// Both run on worker threads (TYK_PLUGIN_WORKERS), so they may block on I/O.
pub fn run<D, E>(dispatch: D, dispatch_event: E) -> !
where
    D: Fn(Object, &mut Call) -> Object + Send + Sync + 'static,
    E: Fn(Event) + Send + Sync + 'static,
{
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            print!("{}", settings::help());
            std::process::exit(0)
        }
        Some("--version" | "-V") => {
            println!("tyk-grpc-plugin {VERSION}");
            std::process::exit(0)
        }
        Some("--health-check") => std::process::exit(health_check()),
        Some(other) => {
            eprintln!("tyk-grpc-plugin: unknown argument {other:?}; see --help");
            std::process::exit(2)
        }
    }
    let code = Settings::from_env().and_then(|settings| serve(settings, Hooks { dispatch, dispatch_event }));
    std::process::exit(code.unwrap_or_else(|error| {
        eprintln!("tyk-grpc-plugin: {error}");
        1
    }))
}

struct Hooks<D, E> {
    dispatch: D,
    dispatch_event: E,
}

/// Everything a call needs on its worker.
struct Shared<D, E> {
    hooks: Hooks<D, E>,
    budget: Arc<Budget>,
    hmac: Arc<Hmac>,
    pool: Arc<Pool>,
    redaction: Redaction,
}

enum Notice {
    Signal(i32),
    Drained,
}

/// Serves until a signal ends it; returns the exit code.
fn serve<D, E>(settings: Settings, hooks: Hooks<D, E>) -> Result<i32, String>
where
    D: Fn(Object, &mut Call) -> Object + Send + Sync + 'static,
    E: Fn(Event) + Send + Sync + 'static,
{
    logging::init(&settings.log_filter, settings.log_format);
    // Big messages' buffers are mapped and unmapped on their own, so their memory goes back to
    // the system when freed. glibc would otherwise raise this threshold to the largest block freed
    // so far and keep later ones in its arenas, where one thread's freed block is no use to the
    // next thread's allocation.
    // SAFETY: mallopt only sets an allocator parameter, before the threads that allocate start.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    let policy = Policy {
        clock_skew: settings.clock_skew,
        algorithms: settings.hmac_algorithms.clone(),
        required_headers: settings.hmac_required_headers.clone(),
    };
    let hmac = Arc::new(Hmac::new(settings.hmac_keys_file.clone(), policy)?);
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot handle signals: {e}"))?;

    let budget =
        Arc::new(Budget { limit: settings.memory_limit - settings.memory_limit / 4, used: AtomicUsize::new(0) });
    let shared = Arc::new(Shared {
        hooks,
        budget,
        hmac: hmac.clone(),
        pool: Pool::new(cores(), settings.workers),
        redaction: Redaction {
            hide_secrets: !settings.log_secrets,
            extra_headers: settings.log_redact_headers.clone(),
            leave_out_bodies: !settings.log_bodies,
        },
    });
    let events = shared.clone();
    let workers_look = shared.pool.looks();
    let service = ServiceBuilder::new()
        .add_unary_handler(&DISPATCH_UNPARSED, move |ctx, message, sink| shared.dispatch(&ctx, message, sink))
        .add_unary_handler(&proto::DISPATCH_EVENT, move |_, event, sink| events.dispatch_event(event, sink))
        .build();
    let env = Arc::new(Environment::new(cores()));
    let millis = |duration: Duration| match duration.as_millis() {
        0 => i32::MAX, // gRPC's "never"
        ms => ms.min(i32::MAX as u128) as i32,
    };
    // gRPC core's buffers (messages being received, and received ones until parsed) take a quarter
    // of the memory limit: past it, core slows its connections' flow and cancels streams with
    // RESOURCE_EXHAUSTED. The calls handed to workers take the rest (Budget).
    let quota = ResourceQuota::new(Some("tyk-grpc-plugin")).resize_memory(settings.memory_limit / 4);
    let channel_args = ChannelBuilder::new(env.clone())
        .set_resource_quota(quota)
        .max_receive_message_len(settings.max_message_bytes)
        .max_send_message_len(settings.max_message_bytes)
        .raw_cfg_int(c"grpc.max_connection_age_ms".into(), millis(settings.max_connection_age))
        .raw_cfg_int(c"grpc.max_connection_age_grace_ms".into(), millis(settings.max_connection_age_grace))
        .raw_cfg_int(c"grpc.keepalive_time_ms".into(), millis(settings.keepalive_time))
        .raw_cfg_int(c"grpc.keepalive_timeout_ms".into(), millis(settings.keepalive_timeout))
        .raw_cfg_int(c"grpc.keepalive_permit_without_calls".into(), 1)
        .raw_cfg_int(c"grpc.http2.max_pings_without_data".into(), 0)
        .build_args();
    let health = Health::default();
    let mut server = ServerBuilder::new(env)
        .channel_args(channel_args)
        .register_service(service)
        .register_service(health.service())
        .register_service(crate::reflection::service())
        .build()
        .map_err(|e| format!("cannot create the gRPC server: {e}"))?;
    let sockets = settings
        .listen
        .iter()
        .map(|address| {
            Socket::bind(address).map_err(|error| format!("TYK_PLUGIN_LISTEN: cannot listen on {address}: {error}"))
        })
        .collect::<Result<Vec<Socket>, String>>()?;
    let bound: Vec<String> = sockets.iter().map(Socket::address).collect();
    server.start();
    let server = Arc::new(Mutex::new(server));
    let listeners = Listeners::accept(sockets, server.clone());
    if let Some(address) = &settings.metrics_listen {
        metrics::serve(address)?;
    }
    if settings.max_connection_age.is_zero() {
        warn!("TYK_PLUGIN_MAX_CONNECTION_AGE=0: connections never age, so a drain cannot move clients away first; calls that race it fail");
    }
    if settings.hmac_keys_file.is_none() {
        warn!("TYK_PLUGIN_HMAC_KEYS_FILE is not set: accepting the tyk-demo's public HMAC key; set a keys file in production");
    }
    info!(
        "tyk-grpc-plugin {VERSION} listening on {}; {} HMAC key(s); messages up to {} bytes; memory for calls {} bytes; {} workers{}; \
         clock skew {:?}; connection age {:?} + {:?}; shutdown grace {:?}; keepalive {:?}/{:?}",
        bound.join(", "),
        hmac.key_count(),
        settings.max_message_bytes,
        settings.memory_limit,
        settings.workers,
        if workers_look { "" } else { " (under a CPU limit: out of jobs they sleep at once)" },
        settings.clock_skew,
        settings.max_connection_age,
        settings.max_connection_age_grace,
        settings.shutdown_grace,
        settings.keepalive_time,
        settings.keepalive_timeout,
    );

    let (notify, notices) = mpsc::channel();
    let signal_notify = notify.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_notify.send(Notice::Signal(signal)).is_err() {
                break;
            }
        }
    });
    loop {
        match notices.recv() {
            Ok(Notice::Signal(SIGHUP)) => hmac.reload(),
            Ok(Notice::Signal(signal)) => {
                info!("signal {signal}: draining");
                break;
            }
            Ok(Notice::Drained) | Err(_) => break,
        }
    }
    let mut server = server.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(drain(&mut server, &listeners, &health, &settings, notify, &notices).unwrap_or_else(|code| code))
}

impl<D, E> Shared<D, E>
where
    D: Fn(Object, &mut Call) -> Object + Send + Sync + 'static,
    E: Fn(Event) + Send + Sync + 'static,
{
    /// On a gRPC thread: hands the call to a worker, so these threads never wait on a hook, if the
    /// memory budget has room for it.
    fn dispatch(self: &Arc<Self>, ctx: &RpcContext, message: MessageReader, sink: UnarySink<Object>) {
        let copies = if log_enabled!(Level::Info) { COPIES_LOGGED } else { COPIES };
        let arrived = Instant::now();
        metrics().received(message.len());
        let Some(reservation) = self.budget.reserve(message.len() * copies) else {
            metrics().answered(None, RpcStatusCode::RESOURCE_EXHAUSTED, arrived.elapsed());
            let status = RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                "the plugin's memory for calls in flight (TYK_PLUGIN_MEMORY_LIMIT) is taken: try again".into(),
            );
            return finish(ctx, sink.fail(status));
        };
        let traceparent = ctx.request_headers().iter().find(|(name, _)| *name == "traceparent");
        let trace_id = traceparent.and_then(|(_, value)| logging::trace_id(value)).map(str::to_owned);
        let shared = self.clone();
        self.pool.execute(move || Some(shared.run_dispatch(message, trace_id, arrived, reservation, sink)));
    }

    /// On a worker: the object, the hook, the reply, then the log lines. At INFO a copy of the
    /// received object is kept for its line, written once the reply is on its way; at WARN nothing
    /// is copied.
    fn run_dispatch(
        &self,
        mut message: MessageReader,
        trace_id: Option<String>,
        arrived: Instant,
        reservation: Reservation,
        sink: UnarySink<Object>,
    ) -> Unfinished {
        let mut object = Object::new();
        if let Err(error) = object.merge_from(&mut CodedInputStream::from_buf_read(&mut message)) {
            metrics().answered(None, RpcStatusCode::INVALID_ARGUMENT, arrived.elapsed());
            let status =
                RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, format!("not a coprocess.Object: {error}"));
            return until_sent(sink.fail(status), None);
        }
        let hook = object.hook_type.enum_value().ok();
        drop(message);
        let received = log_enabled!(Level::Info).then(|| object.clone());
        let mut call = Call { trace_id, hmac: self.hmac.clone(), notes: Vec::new() };
        // A panic in hook logic fails this one call, not the worker.
        let (sent, code) = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.hooks.dispatch)(object, &mut call)))
        {
            Ok(reply) => (sink.success(reply), RpcStatusCode::OK),
            Err(_) => {
                call.log(format_args!("failed: the hook panicked"));
                let status = RpcStatus::with_message(RpcStatusCode::INTERNAL, "the plugin failed on this call".into());
                (sink.fail(status), RpcStatusCode::INTERNAL)
            }
        };
        metrics().answered(hook, code, arrived.elapsed());
        if let Some(mut received) = received {
            logging::redact(&mut received, &self.redaction);
            logging::log_object(&received, call.trace_id());
            for note in &call.notes {
                logging::log_note(&received, call.trace_id(), note);
            }
        }
        // The reservation lasts until the reply is sent.
        until_sent(sent, Some(reservation))
    }

    fn dispatch_event(self: &Arc<Self>, event: Event, sink: UnarySink<EventReply>) {
        let shared = self.clone();
        self.pool.execute(move || {
            let event_type = serde_json::from_str::<EventType>(&event.payload).ok().and_then(|payload| payload.event);
            let (sent, code) = match std::panic::catch_unwind(AssertUnwindSafe(|| (shared.hooks.dispatch_event)(event)))
            {
                Ok(()) => (sink.success(EventReply::new()), RpcStatusCode::OK),
                Err(_) => {
                    let status =
                        RpcStatus::with_message(RpcStatusCode::INTERNAL, "the plugin failed on this event".into());
                    (sink.fail(status), RpcStatusCode::INTERNAL)
                }
            };
            metrics().event(event_type.as_deref(), code);
            Some(until_sent(sent, None))
        });
    }
}

/// The one field of an event's payload the metrics read.
#[derive(serde::Deserialize)]
struct EventType {
    event: Option<String>,
}

/// What a call takes on a worker, in multiples of its message (which itself counts in core's
/// quota until parsed): the parsed object and the reply; at INFO also the object's copy for the
/// log (whose line shows bodies only in part).
const COPIES: usize = 2;
const COPIES_LOGGED: usize = 3;

/// The memory for calls in flight, beside the ResourceQuota that bounds gRPC core's own buffers.
struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// Memory taken from the budget until dropped.
struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let fits = |used: usize| used.checked_add(bytes).filter(|&total| total <= self.limit);
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).ok()?;
        Some(Reservation { budget: self.clone(), bytes })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Dispatch as the server receives it: the message is parsed on the worker, not on gRPC's thread,
/// so that the object is made and freed on one thread.
const DISPATCH_UNPARSED: Method<MessageReader, Object> = Method {
    ty: MethodType::Unary,
    name: proto::DISPATCH.name,
    req_mar: Marshaller { ser: |_, _| unreachable!("the server never sends a request"), de: Ok },
    resp_mar: proto::DISPATCH.resp_mar,
};

/// gRPC cancels a call whose reply is dropped before the client's side has closed, so the worker
/// keeps it until it is sent, and with it the call's memory reservation.
fn until_sent(sent: UnarySinkResult, reservation: Option<Reservation>) -> Unfinished {
    Box::pin(async move {
        let _ = sent.await;
        drop(reservation);
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The same for replies sent on a gRPC thread, which must not block: the reply is kept on the
/// call's queue until it resolves.
pub(crate) fn finish(ctx: &RpcContext, sent: UnarySinkResult) {
    ctx.spawn(async move {
        let _ = sent.await;
    });
}

/// Graceful drain, step by step, so that no call is lost even for a client that never checks
/// health (the gateway). A second SIGTERM or SIGINT at any point exits at once with 128 + its
/// number (the `Err`); returns the exit code otherwise.
///
/// Why the steps: gRPC core cancels every call that reaches a server after its shutdown has begun,
/// and a client learns of the shutdown only from the GOAWAY that follows, so calls sent in between
/// fail. A connection that reaches its maximum age gets a GOAWAY without any shutdown: its calls
/// finish, and the client opens a new connection, which goes to another replica once this one has
/// stopped listening.
fn drain(
    server: &mut Server,
    listeners: &Listeners,
    health: &Health,
    settings: &Settings,
    notify: mpsc::Sender<Notice>,
    notices: &mpsc::Receiver<Notice>,
) -> Result<i32, i32> {
    let started = Instant::now();
    // 1. Health turns NOT_SERVING and ends its Watch streams: health-checking clients leave now.
    health.start_drain();
    // 2. No new connections: clients that reconnect are refused and go to other replicas.
    listeners.close();
    // 3. Serve on until every connection has aged out (by 1.1 times the maximum age, with gRPC's
    //    jitter, plus a second for the GOAWAY to arrive), or until none is left.
    if !settings.max_connection_age.is_zero() {
        let aged_out = started + settings.max_connection_age.mul_f64(1.1) + Duration::from_secs(1);
        while listeners.open_connections() > 0 && Instant::now() < aged_out {
            wait(notices, Instant::now() + Duration::from_millis(50))?;
        }
    }
    // 4. Refuse new calls; answer those in flight.
    let shutdown = server.shutdown();
    std::thread::spawn(move || {
        let _ = futures_executor::block_on(shutdown);
        let _ = notify.send(Notice::Drained);
    });
    if wait(notices, Instant::now() + settings.shutdown_grace)? {
        let counts = CallCounts::read()
            .map_or_else(String::new, |c| format!("; since start {} calls answered OK, {} not", c.succeeded, c.failed));
        info!("drained in {} ms{counts}", started.elapsed().as_millis());
        return Ok(0);
    }
    // 5. Past the grace, cancel what is left.
    let open = CallCounts::read().map_or_else(|| "the".into(), |c| c.open().to_string());
    warn!("shutdown grace of {:?} is over: cancelling {open} call(s) still open", settings.shutdown_grace);
    server.cancel_all_calls();
    let _ = notices.recv_timeout(Duration::from_secs(2));
    Ok(0)
}

/// Waits until `deadline`; true if the server has shut down by then. SIGHUP is ignored.
fn wait(notices: &mpsc::Receiver<Notice>, deadline: Instant) -> Result<bool, i32> {
    loop {
        match notices.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Notice::Drained) => return Ok(true),
            Ok(Notice::Signal(SIGHUP)) => info!("SIGHUP ignored while draining"),
            Ok(Notice::Signal(signal)) => {
                warn!("signal {signal} during the drain: exiting at once");
                return Err(128 + signal);
            }
            Err(_) => return Ok(false),
        }
    }
}

/// The server's call counters, from gRPC core's channelz: every call on every service.
struct CallCounts {
    started: u64,
    succeeded: u64,
    failed: u64,
}

impl CallCounts {
    fn read() -> Option<CallCounts> {
        let servers: serde_json::Value = grpcio::channelz::get_servers(0, |json| serde_json::from_str(json).ok())?;
        // channelz prints int64 counters as JSON strings and leaves zeros out.
        let count = |data: &serde_json::Value, name: &str| -> u64 {
            data.get(name).and_then(|value| value.as_str()?.parse().ok()).unwrap_or(0)
        };
        let data: Vec<&serde_json::Value> =
            servers.get("server")?.as_array()?.iter().filter_map(|server| server.get("data")).collect();
        let total = |name: &str| data.iter().map(|data| count(data, name)).sum();
        Some(CallCounts {
            started: total("callsStarted"),
            succeeded: total("callsSucceeded"),
            failed: total("callsFailed"),
        })
    }

    fn open(&self) -> u64 {
        self.started.saturating_sub(self.succeeded + self.failed)
    }
}

/// `--health-check`: the gRPC health of the server at the first TYK_PLUGIN_LISTEN address.
fn health_check() -> i32 {
    let first = Settings::from_env().ok().and_then(|settings| settings.listen.into_iter().next()).unwrap_or_default();
    let target = match first.rsplit_once(':') {
        Some(("[::]" | "0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        _ => first,
    };
    let env = Arc::new(Environment::new(1));
    let channel = ChannelBuilder::new(env).connect(&target);
    let options = grpcio::CallOption::default().timeout(Duration::from_secs(3));
    match grpcio::Client::new(channel).unary_call(&proto::HEALTH_CHECK, &Default::default(), options) {
        Ok(reply) if reply.status == proto::ServingStatus::SERVING.into() => 0,
        Ok(reply) => {
            eprintln!("tyk-grpc-plugin at {target}: {:?}", reply.status.enum_value_or_default());
            1
        }
        Err(error) => {
            eprintln!("tyk-grpc-plugin at {target}: {error}");
            1
        }
    }
}
