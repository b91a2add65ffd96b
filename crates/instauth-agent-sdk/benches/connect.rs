//! Start-to-connected on loopback, in process: read the AWS proof from a fake IMDS (IMDSv2:
//! token PUT and three GETs), exchange it with a minimal instauth-like server, fetch the
//! manifest and send the first heartbeat. Each iteration builds fresh clients (new
//! connections), as a starting agent does.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use instauth_agent_sdk::{
    Client, ClientOptions, Credentials, GoogleIdentity, LifecycleState, MetadataClient,
    MetadataEndpoints, Provider, Session,
};
use instauth_testkit::bench::{self, Criterion};
use instauth_testkit::imds::{AwsImdsMode, FakeImds};
use instauth_testkit::TestPki;

fn start_to_connected(c: &mut Criterion) {
    let rt = bench::runtime();
    let pki = TestPki::new();
    let (server, imds) = rt.block_on(async {
        (
            common::FakeServer::start().await,
            FakeImds::aws(&pki, "i-bench", "us-east-1", AwsImdsMode::Imdsv2Required).await,
        )
    });
    let endpoints = MetadataEndpoints {
        aws: imds.url().into(),
        ..MetadataEndpoints::default()
    };
    c.bench_function("agent_start_to_connected_aws_loopback", |b| {
        b.iter(|| {
            rt.block_on(async {
                let client = Client::new(&server.url, ClientOptions::default()).unwrap();
                let session = Session::new(
                    client,
                    Credentials::InstanceIdentity {
                        provider: Provider::Aws,
                        metadata: MetadataClient::new(endpoints.clone()).unwrap(),
                        google: GoogleIdentity::default(),
                    },
                    Some("main"),
                );
                session.manifest().await.unwrap();
                session.heartbeat(LifecycleState::Starting).await.unwrap();
            })
        })
    });
}

instauth_testkit::bench_main!(start_to_connected);
