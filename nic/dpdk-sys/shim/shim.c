/* Real functions for DPDK's `static inline` fast paths; see shim.h. */
#include "shim.h"

int sy_errno(void) { return rte_errno; }

uint16_t sy_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t sy_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *sy_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

void sy_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

char *sy_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

const uint8_t *sy_mbuf_data(const struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, const uint8_t *); }

uint16_t sy_mbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t sy_mbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint16_t sy_mbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint64_t sy_mbuf_ol_flags(const struct rte_mbuf *m) { return m->ol_flags; }

uint8_t *sy_mbuf_buf(struct rte_mbuf *m) { return (uint8_t *)m->buf_addr; }

uint16_t sy_mbuf_buf_len(const struct rte_mbuf *m) { return m->buf_len; }

uint16_t sy_mbuf_data_off(const struct rte_mbuf *m) { return m->data_off; }

void sy_mbuf_set_data(struct rte_mbuf *m, uint16_t off, uint16_t len) {
    m->data_off = off;
    m->data_len = len;
    m->pkt_len = len;
    m->ol_flags = 0;
}
