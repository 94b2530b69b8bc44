//! OTLP message types generated at build time from `proto/`.
#![allow(clippy::all, missing_docs)]

pub mod common {
    pub mod v1 {
        include!(concat!(
            env!("OUT_DIR"),
            "/opentelemetry.proto.common.v1.rs"
        ));
    }
}
pub mod resource {
    pub mod v1 {
        include!(concat!(
            env!("OUT_DIR"),
            "/opentelemetry.proto.resource.v1.rs"
        ));
    }
}
pub mod trace {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
    }
}
pub mod logs {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.logs.v1.rs"));
    }
}
pub mod collector {
    pub mod trace {
        pub mod v1 {
            include!(concat!(
                env!("OUT_DIR"),
                "/opentelemetry.proto.collector.trace.v1.rs"
            ));
        }
    }
    pub mod logs {
        pub mod v1 {
            include!(concat!(
                env!("OUT_DIR"),
                "/opentelemetry.proto.collector.logs.v1.rs"
            ));
        }
    }
}

pub use collector::logs::v1::ExportLogsServiceRequest;
pub use collector::trace::v1::ExportTraceServiceRequest;

/// spansink's own messages (the spool's record format).
pub mod spansink {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/spansink.v1.rs"));
    }
}
