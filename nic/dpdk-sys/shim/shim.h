/* The parts of DPDK that switchyard-nic uses. DPDK's fast paths
 * (rte_eth_rx_burst, rte_pktmbuf_alloc, ...) are `static inline` in its
 * headers and have no symbol to link against; shim.c gives each one a real
 * function, prefixed `sy_`. Bindgen reads this header. */
#ifndef SWITCHYARD_DPDK_SHIM_H
#define SWITCHYARD_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* Flag values hidden behind function-like macros (RTE_BIT64), which bindgen
 * cannot evaluate; all fit in an int. */
enum sy_flags {
    SY_RX_OFFLOAD_IPV4_CKSUM = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
    SY_RX_OFFLOAD_UDP_CKSUM = RTE_ETH_RX_OFFLOAD_UDP_CKSUM,
    SY_RX_OFFLOAD_TCP_CKSUM = RTE_ETH_RX_OFFLOAD_TCP_CKSUM,
    SY_MBUF_F_RX_L4_CKSUM_MASK = RTE_MBUF_F_RX_L4_CKSUM_MASK,
    SY_MBUF_F_RX_L4_CKSUM_GOOD = RTE_MBUF_F_RX_L4_CKSUM_GOOD,
    SY_MBUF_F_RX_L4_CKSUM_BAD = RTE_MBUF_F_RX_L4_CKSUM_BAD,
    SY_MBUF_DEFAULT_BUF_SIZE = RTE_MBUF_DEFAULT_BUF_SIZE,
};

/* rte_errno of the calling thread. */
int sy_errno(void);

uint16_t sy_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t sy_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *sy_pktmbuf_alloc(struct rte_mempool *mp);
void sy_pktmbuf_free(struct rte_mbuf *m);
/* Grows the (empty) buffer's data by `len` bytes and returns where they start,
 * or NULL when the tailroom is smaller. */
char *sy_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

/* Fields of an mbuf: its first segment's data and length, the whole packet's
 * length, its segment count and offload flags. */
const uint8_t *sy_mbuf_data(const struct rte_mbuf *m);
uint16_t sy_mbuf_data_len(const struct rte_mbuf *m);
uint32_t sy_mbuf_pkt_len(const struct rte_mbuf *m);
uint16_t sy_mbuf_nb_segs(const struct rte_mbuf *m);
uint64_t sy_mbuf_ol_flags(const struct rte_mbuf *m);

/* The whole buffer of a (single-segment) mbuf, headroom included, and where
 * its data starts in it: what the dataplane's own buffer type wraps. */
uint8_t *sy_mbuf_buf(struct rte_mbuf *m);
uint16_t sy_mbuf_buf_len(const struct rte_mbuf *m);
uint16_t sy_mbuf_data_off(const struct rte_mbuf *m);
/* Sets a single-segment mbuf's data to `len` bytes at `off` in its buffer,
 * and clears its offload flags, before it goes to transmit. */
void sy_mbuf_set_data(struct rte_mbuf *m, uint16_t off, uint16_t len);

#endif
