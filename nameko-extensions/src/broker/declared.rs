//! What one connection declared, so a consumer's queue can be declared again when the
//! connection recovers (both brokers).

use std::collections::{BTreeMap, BTreeSet};

use super::{Binding, Exchange, Queue, Topology};

/// A connection's declares, to declare again for a consumer when it recovers.
#[derive(Debug, Default)]
pub(crate) struct Declared {
    exchanges: BTreeMap<String, Exchange>,
    queues: BTreeMap<String, Queue>,
    bindings: BTreeSet<(String, String, String)>,
}

impl Declared {
    pub(crate) fn record(&mut self, topology: &Topology) {
        for exchange in &topology.exchanges {
            self.exchanges.insert(exchange.name.clone(), exchange.clone());
        }
        for queue in &topology.queues {
            self.queues.insert(queue.name.clone(), queue.clone());
        }
        for b in &topology.bindings {
            self.bindings
                .insert((b.exchange.clone(), b.queue.clone(), b.routing_key.clone()));
        }
    }

    /// The queue as declared, its bindings, and the exchanges of those bindings this
    /// connection declared (a binding to an exchange it did not declare is left out
    /// unless the exchange is predeclared, `amq.*`).
    pub(crate) fn for_queue(&self, queue: &str) -> Topology {
        let mut topology = Topology::new();
        let Some(decl) = self.queues.get(queue) else {
            return topology;
        };
        topology = topology.queue(decl.clone());
        for (exchange, _, key) in self.bindings.iter().filter(|(_, q, _)| q == queue) {
            match self.exchanges.get(exchange) {
                Some(decl) => {
                    if !topology.exchanges.iter().any(|e| e.name == *exchange) {
                        topology = topology.exchange(decl.clone());
                    }
                }
                None if exchange.starts_with("amq.") => {}
                None => continue,
            }
            topology = topology.binding(Binding::new(exchange, queue, key));
        }
        topology
    }

    pub(crate) fn forget_queue(&mut self, name: &str) {
        self.queues.remove(name);
        self.bindings.retain(|(_, q, _)| q != name);
    }

    pub(crate) fn forget_exchange(&mut self, name: &str) {
        self.exchanges.remove(name);
        self.bindings.retain(|(e, _, _)| e != name);
    }
}
