//! Which broker node a dial tries first (B17). warren may list several nodes of a RabbitMQ
//! cluster; each dial names the order in which the driver tries them, and the driver reports
//! which one answered. The order starts at the node that answered last (so a dead node costs
//! one failed connect, not one per dial), and with `spread` placement a hub puts each new
//! upstream on the node it uses least, so a hub that needs several broker connections spreads
//! them over the cluster.

use smallvec::SmallVec;

/// Nodes to try, in order (indices into the configured upstream list).
pub type NodeOrder = SmallVec<[usize; 4]>;

/// One owner's memory of the nodes: how many there are and which answered last.
#[derive(Debug, Clone)]
pub struct Nodes {
    count: usize,
    preferred: usize,
}

impl Nodes {
    /// Memory for `count` nodes (at least one); the first is tried first.
    #[must_use]
    pub fn new(count: usize) -> Self {
        Nodes {
            count: count.max(1),
            preferred: 0,
        }
    }

    /// Every node, starting with the one that answered last.
    #[must_use]
    pub fn order(&self) -> NodeOrder {
        (0..self.count)
            .map(|i| (self.preferred + i) % self.count)
            .collect()
    }

    /// Every node, the least used first (`in_use` lists the node of each connection the
    /// owner has); ties keep the order of [`Nodes::order`].
    #[must_use]
    pub fn spread_order(&self, in_use: impl IntoIterator<Item = usize>) -> NodeOrder {
        let mut load: SmallVec<[usize; 4]> = SmallVec::from_elem(0, self.count);
        for node in in_use {
            if let Some(n) = load.get_mut(node) {
                *n += 1;
            }
        }
        let mut order = self.order();
        // Stable: equally loaded nodes stay in rotation order.
        order.sort_by_key(|&node| load[node]);
        order
    }

    /// Later dials start with the node after the current first: with `spread` placement,
    /// admission's logins (each the first upstream of a hub) take the nodes in turn.
    pub fn rotate(&mut self) {
        self.preferred = (self.preferred + 1) % self.count;
    }

    /// `node` answered a dial: later dials start there.
    pub fn answered(&mut self, node: usize) {
        if node < self.count {
            self.preferred = node;
        }
    }

    /// `node` accepted a connection but failed it for another reason than the credentials
    /// (closed, silent, timed out): later dials start with the node after it.
    pub fn failed(&mut self, node: usize) {
        if node == self.preferred {
            self.preferred = (node + 1) % self.count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_starts_where_the_last_answer_came_from() {
        let mut n = Nodes::new(3);
        assert_eq!(n.order().as_slice(), [0, 1, 2]);
        n.answered(2);
        assert_eq!(n.order().as_slice(), [2, 0, 1]);
        n.failed(2);
        assert_eq!(n.order().as_slice(), [0, 1, 2]);
        // A failure of a node that is not first changes nothing.
        n.failed(2);
        assert_eq!(n.order().as_slice(), [0, 1, 2]);
    }

    #[test]
    fn rotate_moves_the_start_by_one() {
        let mut n = Nodes::new(3);
        n.rotate();
        assert_eq!(n.order().as_slice(), [1, 2, 0]);
        n.rotate();
        n.rotate();
        assert_eq!(n.order().as_slice(), [0, 1, 2]);
    }

    #[test]
    fn spread_puts_the_least_used_node_first() {
        let mut n = Nodes::new(3);
        n.answered(1);
        assert_eq!(n.spread_order([]).as_slice(), [1, 2, 0]);
        assert_eq!(n.spread_order([1]).as_slice(), [2, 0, 1]);
        assert_eq!(n.spread_order([1, 2]).as_slice(), [0, 1, 2]);
        assert_eq!(n.spread_order([1, 2, 0, 0]).as_slice(), [1, 2, 0]);
    }

    #[test]
    fn one_node_and_out_of_range_reports() {
        let mut n = Nodes::new(0);
        assert_eq!(n.order().as_slice(), [0]);
        n.answered(5);
        n.failed(5);
        assert_eq!(n.spread_order([7]).as_slice(), [0]);
    }
}
