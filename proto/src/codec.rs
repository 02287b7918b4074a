//! The protobuf codec every Fulcrum service uses.
//!
//! It is tonic-prost's, except for one thing: a message that does not decode is the
//! sender's fault, so it is answered with `InvalidArgument` (naming the message type and
//! what was wrong) rather than the `Internal` that tonic-prost uses. A peer that sends
//! garbage learns that its request was bad, and the status cannot be mistaken for a fault
//! of the receiving node.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// A [`Codec`] for prost messages that reports undecodable input as `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct FulcrumCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for FulcrumCodec<T, U> {
    fn default() -> Self {
        FulcrumCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for FulcrumCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _type: PhantomData }
    }
}

/// Decodes one message; a decoding failure is `InvalidArgument`.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let name = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("message");
            Status::invalid_argument(format!("not a valid {name} message: {e}"))
        })
    }
}
