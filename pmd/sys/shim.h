/* Functions for what DPDK only offers as macros or thread-local variables. */
#ifndef VW_SHIM_H
#define VW_SHIM_H
#include <stdint.h>

/* The calling thread's rte_errno (a per-lcore variable in DPDK). */
int vw_rte_errno(void);
/* RTE_MAX_ETHPORTS, RTE_PKTMBUF_HEADROOM and RTE_MAX_LCORE as built into this DPDK. */
uint32_t vw_max_ethports(void);
uint32_t vw_pktmbuf_headroom(void);
uint32_t vw_max_lcore(void);
#endif
