/*
 * SHIM for the macOS compile check (scripts/check-macos.sh), not Apple's header.
 *
 * macOS declares the pty helpers of libSystem in <util.h>, which zig's bundled macOS
 * headers do not include.  This declares the one the tree uses (tests/test_tenants.c),
 * with the signature of Apple's header.  A Mac build uses the real header from the SDK.
 */
#ifndef ANES_SHIM_UTIL_H
#define ANES_SHIM_UTIL_H

#include <sys/types.h>
#include <termios.h>
#include <sys/ioctl.h>

pid_t forkpty(int *amaster, char *name, struct termios *termp, struct winsize *winp);

#endif
