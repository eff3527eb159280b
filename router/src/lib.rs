//! steward-router: the data plane in front of the engines.
//!
//! Flow of a request: [`request`] parses the OpenAI body into a
//! [`request::ValidRequest`]; the routing [`table`] (built by the [`index`]
//! from discovered InferenceServices and pods) maps its `model` to a service;
//! [`limits`] admits it; [`pick`] chooses a revision by weight and an endpoint
//! by load ([`endpoints`]); [`proxy`] streams the engine's answer back, with
//! [`retry`] deciding whether a failure before the first byte is tried again.
//! [`discovery`] feeds the index from the API server, [`load`] polls the
//! engines' `/load`, [`metrics`] exports `steward_router_*`; [`serve`]
//! accepts connections and runs the shutdown sequence; [`h1_conn`] serves
//! HTTP/1.1 on them (hyper takes h2c and anything unusual); request bodies
//! are read through [`upload`].
//!
//! Decisions ([`index`], [`table`], [`pick`], [`limits`], [`retry`], [`sse`],
//! [`h1`], the HTTP/1.1 wire format of the engine client, and [`h1_server`],
//! that of the server side) are pure and unit tested; I/O lives in
//! [`proxy`], [`upstream`], [`h1_conn`], [`conn_io`], [`load`],
//! [`discovery`] and [`server`].

pub mod body;
pub mod config;
pub mod conn_io;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod h1;
pub mod h1_conn;
pub mod h1_server;
pub mod hashing;
pub mod index;
pub mod limits;
pub mod load;
pub mod metrics;
pub mod pick;
pub mod proxy;
pub mod request;
pub mod retry;
pub mod serve;
pub mod server;
pub mod sse;
pub mod table;
pub mod upload;
pub mod upstream;
