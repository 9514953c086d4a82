//! [`AdmissionConfig`], admission's settings and their documented defaults: what the
//! runtime's configuration file and a live reload ([`super::Input::Reconfigure`]) fill in.

use crate::credentials::Credentials;
use crate::handshake::HandshakeConfig;
use crate::hub::HubConfig;
use std::time::Duration;

/// Settings of admission. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// What clients are offered in `Tune`, and how long their handshake may take.
    pub handshake: HandshakeConfig,
    /// Settings of the hubs admission starts (and of its own broker logins).
    pub hub: HubConfig,
    /// Connected clients; more are refused at `Open` with 530.
    pub max_clients: usize,
    /// Running hubs; clients of further credentials are refused at `Open` with 530.
    pub max_hubs: usize,
    /// Whether every connection starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer in front of warren; one without is closed before any AMQP byte (B17).
    pub proxy_protocol: bool,
    /// Hubs the clients of one (user, password, vhost) are spread over, each with its own
    /// broker connections: one hub's task runs on one thread, so a busy key gets as many as
    /// warren has threads.
    pub hubs_per_key: usize,
    /// How long the broker's refusal of a login or a vhost is remembered (zero: not at all).
    pub refusal_ttl: Duration,
    /// How long an account the broker accepted is trusted for new clients without a new
    /// login, while the event feed is not up (B2's "bounded age").
    pub credentials_ttl: Duration,
    /// The account and vhost whose `amq.rabbitmq.event` exchange tells warren of changed
    /// passwords, deleted users and revoked permissions. `None`: age mode only.
    pub events: Option<Credentials>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            handshake: HandshakeConfig::default(),
            hub: HubConfig::default(),
            max_clients: 50_000,
            max_hubs: 1000,
            proxy_protocol: false,
            hubs_per_key: 1,
            refusal_ttl: Duration::from_secs(5),
            credentials_ttl: Duration::from_secs(30),
            events: None,
        }
    }
}
