//! gRPC server reflection, so grpcurl and similar tools can list, describe and call the server
//! without proto files. No crate does this for grpcio, hence this module.
//!
//! Both grpc.reflection.v1alpha (grpcurl up to 1.8) and grpc.reflection.v1 are served. They differ
//! only in their package, so one handler over the v1 types serves both method names, and v1alpha's
//! descriptor is v1's, renamed. Every descriptor comes from the generated code, not a second copy.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use futures_util::{SinkExt as _, TryStreamExt as _};
use grpcio::{DuplexSink, Method, RequestStream, RpcContext, RpcStatusCode, Service, ServiceBuilder, WriteFlags};
use protobuf::descriptor::{DescriptorProto, FileDescriptorProto};
use protobuf::reflect::FileDescriptor;
use protobuf::Message as _;

use crate::proto::reflection_v1::server_reflection_request::Message_request as Request;
use crate::proto::reflection_v1::server_reflection_response::Message_response as Response;
use crate::proto::reflection_v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};
use crate::proto::{self, REFLECTION_V1};

const V1ALPHA_METHOD: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// The reflection service for both protocol versions.
pub fn service() -> Service {
    let serve = |ctx: RpcContext, requests: RequestStream<ServerReflectionRequest>, sink: DuplexSink<_>| {
        let catalogue = catalogue();
        let replies = requests.map_ok(move |request| (catalogue.answer(request), WriteFlags::default()));
        ctx.spawn(async move {
            let mut sink = sink;
            let _ = sink.send_all(&mut replies.into_stream()).await;
            let _ = sink.close().await;
        });
    };
    // v1alpha carries the same bytes as v1: serve it with the v1 types.
    let v1alpha_as_v1 = Method { name: V1ALPHA_METHOD, ..REFLECTION_V1 };
    ServiceBuilder::new()
        .add_duplex_streaming_handler(&REFLECTION_V1, serve)
        .add_duplex_streaming_handler(&v1alpha_as_v1, serve)
        .build()
}

/// The files this server can describe: its services' files and everything they import.
fn catalogue() -> Arc<Catalogue> {
    static CATALOGUE: OnceLock<Arc<Catalogue>> = OnceLock::new();
    CATALOGUE
        .get_or_init(|| {
            Arc::new(Catalogue::new(&[
                proto::coprocess_object::file_descriptor().clone(),
                proto::health::file_descriptor().clone(),
                v1alpha_file(),
                proto::reflection_v1::file_descriptor().clone(),
            ]))
        })
        .clone()
}

/// grpc.reflection.v1alpha's file: v1's with the package, and the types that name it, renamed.
fn v1alpha_file() -> FileDescriptor {
    let mut file = proto::reflection_v1::file_descriptor().proto().clone();
    file.set_name("reflection_v1alpha.proto".into());
    file.set_package("grpc.reflection.v1alpha".into());
    let fields = file.message_type.iter_mut().flat_map(|message| &mut message.field);
    let methods = file.service.iter_mut().flat_map(|service| &mut service.method);
    let type_names = fields
        .filter_map(|field| field.type_name.as_mut())
        .chain(methods.flat_map(|method| [method.input_type.as_mut(), method.output_type.as_mut()]).flatten());
    for type_name in type_names {
        *type_name = type_name.replacen(".grpc.reflection.v1.", ".grpc.reflection.v1alpha.", 1);
    }
    FileDescriptor::new_dynamic(file, &[]).expect("v1's file, renamed, is a valid file")
}

struct Catalogue {
    services: Vec<String>,
    /// Serialized FileDescriptorProto and the names of the files it imports, by file name.
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// The file that defines each fully qualified symbol (message, enum, service, method).
    symbols: HashMap<String, String>,
}

impl Catalogue {
    fn new(roots: &[FileDescriptor]) -> Catalogue {
        let mut catalogue = Catalogue { services: Vec::new(), files: HashMap::new(), symbols: HashMap::new() };
        for root in roots {
            let file = root.proto();
            let package = file.package();
            catalogue.services.extend(file.service.iter().map(|service| qualified(package, service.name())));
            catalogue.add(root);
        }
        catalogue
    }

    fn add(&mut self, file: &FileDescriptor) {
        if self.files.contains_key(file.name()) {
            return;
        }
        let proto: &FileDescriptorProto = file.proto();
        let name = file.name().to_owned();
        let package = proto.package();
        for service in &proto.service {
            let service_name = qualified(package, service.name());
            for method in &service.method {
                self.symbols.insert(format!("{service_name}.{}", method.name()), name.clone());
            }
            self.symbols.insert(service_name, name.clone());
        }
        for message in &proto.message_type {
            self.add_message(package, message, &name);
        }
        for enumeration in &proto.enum_type {
            self.symbols.insert(qualified(package, enumeration.name()), name.clone());
        }
        let bytes = proto.write_to_bytes().expect("a compiled-in descriptor serializes");
        self.files.insert(name, (bytes, proto.dependency.clone()));
        for dependency in file.deps() {
            self.add(dependency);
        }
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto, file: &str) {
        let name = qualified(scope, message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested, file);
        }
        for enumeration in &message.enum_type {
            self.symbols.insert(qualified(&name, enumeration.name()), file.to_owned());
        }
        self.symbols.insert(name, file.to_owned());
    }

    fn answer(&self, request: ServerReflectionRequest) -> ServerReflectionResponse {
        let response = match &request.message_request {
            Some(Request::ListServices(_)) => Response::ListServicesResponse(ListServiceResponse {
                service: self
                    .services
                    .iter()
                    .map(|name| ServiceResponse { name: name.clone(), ..Default::default() })
                    .collect(),
                ..Default::default()
            }),
            Some(Request::FileByFilename(name)) => self.file_with_imports(name, "file"),
            Some(Request::FileContainingSymbol(symbol)) => match self.symbols.get(symbol.trim_start_matches('.')) {
                Some(file) => self.file_with_imports(file, "symbol"),
                None => not_found("symbol", symbol),
            },
            Some(Request::AllExtensionNumbersOfType(message)) if self.symbols.contains_key(message.as_str()) => {
                Response::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: message.clone(),
                    ..Default::default()
                })
            }
            Some(Request::AllExtensionNumbersOfType(message)) => not_found("type", message),
            Some(Request::FileContainingExtension(extension)) => not_found("extension of", &extension.containing_type),
            None => error(RpcStatusCode::INVALID_ARGUMENT, "the request names no message_request".into()),
        };
        ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request).into(),
            message_response: Some(response),
            ..Default::default()
        }
    }

    /// The named file followed by every file it imports, directly or not.
    fn file_with_imports(&self, name: &str, what: &str) -> Response {
        if !self.files.contains_key(name) {
            return not_found(what, name);
        }
        let mut order = vec![name.to_owned()];
        let mut next = 0;
        while let Some(current) = order.get(next).cloned() {
            for import in &self.files[&current].1 {
                if !order.contains(import) {
                    order.push(import.clone());
                }
            }
            next += 1;
        }
        Response::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: order.iter().map(|file| self.files[file].0.clone()).collect(),
            ..Default::default()
        })
    }
}

fn qualified(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn not_found(what: &str, name: &str) -> Response {
    error(RpcStatusCode::NOT_FOUND, format!("no {what} {:?} on this server", crate::logging::shorten(name)))
}

fn error(code: RpcStatusCode, message: String) -> Response {
    Response::ErrorResponse(ErrorResponse { error_code: code.into(), error_message: message, ..Default::default() })
}
