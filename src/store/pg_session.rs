//! One PostgreSQL connection as the store's threads use it: tokio-postgres
//! driven from a plain thread on a runtime of its own (what the blocking
//! `postgres` client does), plus the one thing that client cannot do:
//! pipelining.
//!
//! Why: on PostgreSQL every write transaction holds the chain lock from its
//! first statement to its commit (see `super::postgres`), so each round trip
//! it makes holds up every replica's writes. A write whose answer nobody
//! reads ([`Session::defer`]) is therefore not sent on its own: its
//! parameters are encoded at once and it goes out in the same round trip as
//! the next statement that needs an answer (or the commit), in order. The
//! server runs them in the order sent; the first failure is the one
//! reported, and PostgreSQL aborts the transaction at it, so nothing after a
//! failed write takes effect.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use ::postgres::types::{Format, IsNull, ToSql, Type};
use ::postgres::{Error, NoTls, Row, SimpleQueryMessage, Statement};
use bytes::BytesMut;
use futures::StreamExt;
use futures::future::{MaybeDone, maybe_done};

use super::StoreError;

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

type Reply<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + 'a>>;

/// A connection and the writes kept for its next round trip.
pub(super) struct Session {
    client: Option<tokio_postgres::Client>,
    /// Writes not yet sent, in the order they were made.
    deferred: Vec<(Statement, Vec<Encoded>)>,
    /// The connection's task: it runs only while a call blocks on the runtime.
    connection: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Session {
    pub(super) fn connect(config: &tokio_postgres::Config) -> Result<Session, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database {
                message: format!("cannot start the PostgreSQL client's runtime: {e}"),
                disk: false,
            })?;
        let (client, connection) = runtime.block_on(config.connect(NoTls))?;
        let connection = runtime.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(Session {
            client: Some(client),
            deferred: Vec::new(),
            connection: Some(connection),
            runtime,
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed)
    }

    /// Keeps a write for the next round trip. Its parameters are encoded
    /// now, so a value of the wrong type fails here, at the call that made it.
    pub(super) fn defer(&mut self, statement: &Statement, params: Params<'_>) -> Result<(), StoreError> {
        let types = statement.params();
        if types.len() != params.len() {
            return Err(encoding(format!("{} parameters for a statement of {}", params.len(), types.len())));
        }
        let encoded = params
            .iter()
            .zip(types)
            .enumerate()
            .map(|(i, (param, ty))| Encoded::new(*param, ty).map_err(|e| encoding(format!("parameter ${}: {e}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        self.deferred.push((statement.clone(), encoded));
        Ok(())
    }

    /// Forgets the writes not yet sent (their transaction is rolled back).
    pub(super) fn discard_deferred(&mut self) {
        self.deferred.clear();
    }

    /// Sends the deferred writes and then the request `next` makes, in one
    /// round trip, and waits for all their answers. Each request is sent at
    /// its first poll, so polling them in order sends them in order.
    fn round_trip<'s, T>(&'s mut self, next: impl FnOnce(&'s tokio_postgres::Client) -> Reply<'s, T>) -> Result<T, Error> {
        let Session {
            client, runtime, deferred, ..
        } = self;
        let deferred = std::mem::take(deferred);
        let client = client.as_ref().expect("a session has its client until dropped");
        runtime.block_on(async {
            let mut writes: Vec<MaybeDone<Reply<'_, u64>>> = deferred
                .iter()
                .map(|(statement, params)| {
                    let sent: Reply<'_, u64> = Box::pin(client.execute_raw(statement, params.iter()));
                    maybe_done(sent)
                })
                .collect();
            let mut answer = maybe_done(next(client));
            std::future::poll_fn(|cx| {
                let mut done = true;
                for write in &mut writes {
                    done &= Pin::new(write).poll(cx).is_ready();
                }
                done &= Pin::new(&mut answer).poll(cx).is_ready();
                if done { Poll::Ready(()) } else { Poll::Pending }
            })
            .await;
            for write in &mut writes {
                Pin::new(write).take_output().expect("polled to the end")?;
            }
            Pin::new(&mut answer).take_output().expect("polled to the end")
        })
    }

    pub(super) fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.round_trip(|c| Box::pin(c.prepare(sql)))
    }

    pub(super) fn execute(&mut self, statement: &Statement, params: Params<'_>) -> Result<u64, Error> {
        self.round_trip(|c| Box::pin(c.execute(statement, params)))
    }

    pub(super) fn query(&mut self, statement: &Statement, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.round_trip(|c| Box::pin(c.query(statement, params)))
    }

    /// A statement built at run time, prepared unnamed for this one use.
    pub(super) fn query_text(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.round_trip(|c| Box::pin(c.query(sql, params)))
    }

    /// A statement sent unnamed with its parameters' types: parsed,
    /// planned for these values and run in one round trip.
    pub(super) fn query_typed(&mut self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>, Error> {
        self.round_trip(|c| Box::pin(c.query_typed(sql, params)))
    }

    pub(super) fn query_opt(&mut self, statement: &Statement, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.round_trip(|c| Box::pin(c.query_opt(statement, params)))
    }

    pub(super) fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.round_trip(|c| Box::pin(c.simple_query(sql)))
    }

    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.round_trip(|c| Box::pin(c.batch_execute(sql)))
    }

    /// Rows of a statement (prepared, or text prepared unnamed) one at a
    /// time, never all in memory; `visit` says whether to go on.
    pub(super) fn for_each_row<S>(
        &mut self,
        statement: &S,
        params: &[i64],
        visit: &mut dyn FnMut(&Row) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError>
    where
        S: tokio_postgres::ToStatement + ?Sized + Sync,
    {
        let rows = self.round_trip(|c| Box::pin(c.query_raw(statement, params.iter())))?;
        let mut rows = Box::pin(rows);
        while let Some(row) = self.runtime.block_on(rows.next()) {
            if !visit(&row?)? {
                break;
            }
        }
        Ok(())
    }
}

impl Drop for Session {
    /// Says goodbye to the server (the connection sends Terminate once its
    /// client is gone), without waiting long on a dead peer.
    fn drop(&mut self) {
        drop(self.client.take());
        if let Some(connection) = self.connection.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(1), connection).await });
        }
    }
}

fn encoding(message: String) -> StoreError {
    StoreError::Database {
        message: format!("cannot encode a deferred write: {message}"),
        disk: false,
    }
}

/// A parameter already in its wire form.
#[derive(Debug)]
struct Encoded {
    bytes: Option<BytesMut>,
    format: Format,
}

impl Encoded {
    fn new(param: &(dyn ToSql + Sync), ty: &Type) -> Result<Encoded, Box<dyn std::error::Error + Sync + Send>> {
        let mut bytes = BytesMut::new();
        let bytes = match param.to_sql_checked(ty, &mut bytes)? {
            IsNull::No => Some(bytes),
            IsNull::Yes => None,
        };
        Ok(Encoded {
            bytes,
            format: param.encode_format(ty),
        })
    }
}

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.bytes {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    /// Checked when it was encoded, against the same statement.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }

    fn encode_format(&self, _: &Type) -> Format {
        self.format
    }
}
