/* Data-path tunables, one place, each with a comment (Katran's balancer_consts.h habit).
 * Python reads them from the compiled module (lib.MG_*), never duplicates them. */
#ifndef MG_CONSTS_H
#define MG_CONSTS_H

/* Bytes per frame in the frame pool (metadata + headroom + packet). */
#define MG_FRAME_SIZE 2048
/* Bytes reserved at the start of every frame for struct mg_frame_meta. */
#define MG_FRAME_META_SIZE 128
/* Bytes of headroom in front of a received packet, so encapsulation prepends its headers
 * in place (largest: outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
 * = 84, plus room for a VLAN tag). */
#define MG_FRAME_HEADROOM 192
/* Largest packet a frame can hold once received. */
#define MG_FRAME_DATA_MAX (MG_FRAME_SIZE - MG_FRAME_META_SIZE - MG_FRAME_HEADROOM)
/* Largest burst any C kernel processes in one call. */
#define MG_BURST_MAX 256

#endif
