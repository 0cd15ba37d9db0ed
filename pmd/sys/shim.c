#include <rte_config.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include "shim.h"

int vw_rte_errno(void) { return rte_errno; }
uint32_t vw_max_ethports(void) { return RTE_MAX_ETHPORTS; }
uint32_t vw_pktmbuf_headroom(void) { return RTE_PKTMBUF_HEADROOM; }
uint32_t vw_max_lcore(void) { return RTE_MAX_LCORE; }
