//! The levels above each signal's items: the request's resources, each
//! resource's scopes, each scope's items, and the resource and scope that
//! both signals share. The signals differ here only in names, so their
//! levels are declared side by side from one macro.

use crate::otlp::common::v1 as common;
use crate::otlp::logs::v1 as logs;
use crate::otlp::resource::v1 as resource;
use crate::otlp::trace::v1 as trace;
use crate::otlp::{ExportLogsServiceRequest, ExportTraceServiceRequest};

use super::any_value::KeyValue;
use super::logs::LogRecord;
use super::scalars::{int, nullable};
use super::traces::Span;

/// Declares each signal's request, resource and scope levels, nested as in
/// the JSON; their lists may be `null`, as proto3 JSON allows.
macro_rules! levels {
    (@level $name:ident => $($proto:ident)::+ {
        $head:ident: $head_type:ident,
        $(#[$attr:meta])* $list:ident: $item:ident,
    }) => {
        mirror! {
            $name => $($proto)::+ {
                $head: Option<$head_type> => opt,
                #[serde(deserialize_with = "nullable")]
                $(#[$attr])*
                $list: Vec<$item> => all,
                #[serde(alias = "schema_url", deserialize_with = "nullable")]
                schema_url: String => keep,
            }
        }
    };
    ($(
        $request:ident => $($request_proto:ident)::+ {
            $(#[$ra:meta])* $resources:ident: $resource:ident => $($resource_proto:ident)::+ {
                $(#[$sa:meta])* $scopes:ident: $scope:ident => $($scope_proto:ident)::+ {
                    $(#[$ia:meta])* $items:ident: $item:ident,
                }
            }
        }
    )*) => {$(
        mirror! {
            $request => $($request_proto)::+ {
                #[serde(deserialize_with = "nullable")]
                $(#[$ra])*
                $resources: Vec<$resource> => all,
            }
        }
        levels!(@level $resource => $($resource_proto)::+ {
            resource: Resource,
            $(#[$sa])* $scopes: $scope,
        });
        levels!(@level $scope => $($scope_proto)::+ {
            scope: InstrumentationScope,
            $(#[$ia])* $items: $item,
        });
    )*};
}

levels! {
    TracesRequest => ExportTraceServiceRequest {
        #[serde(alias = "resource_spans")]
        resource_spans: ResourceSpans => trace::ResourceSpans {
            #[serde(alias = "scope_spans")]
            scope_spans: ScopeSpans => trace::ScopeSpans {
                spans: Span,
            }
        }
    }

    LogsRequest => ExportLogsServiceRequest {
        #[serde(alias = "resource_logs")]
        resource_logs: ResourceLogs => logs::ResourceLogs {
            #[serde(alias = "scope_logs")]
            scope_logs: ScopeLogs => logs::ScopeLogs {
                #[serde(alias = "log_records")]
                log_records: LogRecord,
            }
        }
    }
}

mirror! {
    Resource => resource::Resource {
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
    }

    InstrumentationScope => common::InstrumentationScope {
        #[serde(deserialize_with = "nullable")]
        name: String => keep,
        #[serde(deserialize_with = "nullable")]
        version: String => keep,
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
    }
}
