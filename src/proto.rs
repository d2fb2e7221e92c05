//! The protobuf types generated from proto/ by build.rs, and the gRPC methods of
//! coprocess.Dispatcher, health checking and server reflection. grpcio's own code generator needs
//! protoc, and all it would add is these constants, so they are declared here by hand. Clients (the
//! tests, the benchmark) use them too, so both sides share one definition.

include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));

use grpcio::{Marshaller, Method, MethodType};

pub use coprocess_common::HookType;
pub use coprocess_object::{Event, EventReply, Object};
pub use health::health_check_response::ServingStatus;
pub use health::{HealthCheckRequest, HealthCheckResponse};

pub const DISPATCHER_SERVICE: &str = "coprocess.Dispatcher";

pub const DISPATCH: Method<Object, Object> = method(MethodType::Unary, "/coprocess.Dispatcher/Dispatch");

pub const DISPATCH_EVENT: Method<Event, EventReply> = method(MethodType::Unary, "/coprocess.Dispatcher/DispatchEvent");

pub const HEALTH_CHECK: Method<HealthCheckRequest, HealthCheckResponse> =
    method(MethodType::Unary, "/grpc.health.v1.Health/Check");

pub const HEALTH_WATCH: Method<HealthCheckRequest, HealthCheckResponse> =
    method(MethodType::ServerStreaming, "/grpc.health.v1.Health/Watch");

pub const REFLECTION_V1: Method<reflection_v1::ServerReflectionRequest, reflection_v1::ServerReflectionResponse> =
    method(MethodType::Duplex, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");

const fn method<Req: protobuf::Message, Resp: protobuf::Message>(
    ty: MethodType,
    name: &'static str,
) -> Method<Req, Resp> {
    Method {
        ty,
        name,
        req_mar: Marshaller { ser: grpcio::pb_ser, de: grpcio::pb_de },
        resp_mar: Marshaller { ser: grpcio::pb_ser, de: grpcio::pb_de },
    }
}
