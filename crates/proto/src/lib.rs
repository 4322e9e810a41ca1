//! The gRPC contracts between authrelay's services, generated from `proto/`.
//! Services depend on this crate, never on each other.

pub mod sasl {
    pub mod v1 {
        tonic::include_proto!("authrelay.sasl.v1");
    }
}

pub mod credentials {
    pub mod v1 {
        tonic::include_proto!("authrelay.credentials.v1");
    }
}

pub mod queue {
    pub mod v1 {
        tonic::include_proto!("authrelay.queue.v1");
    }
}

pub mod frontend {
    pub mod v1 {
        tonic::include_proto!("authrelay.frontend.v1");
    }
}

/// Every proto of this crate as a serialized `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod channel;
pub mod secret;
