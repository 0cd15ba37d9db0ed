/* Headers the bindings are generated from (DPDK 22.11). */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_ring.h>
#include <rte_dev.h>
#include <rte_bus_vdev.h>
#include <rte_vhost.h>
#include "shim.h"
