/*
 * bcryptprimitives.dll for Wine 8.0 (Debian 12), which lacks it: Rust's
 * standard library (Windows 10 and later) imports ProcessPrng from it for
 * random numbers. Real Windows has the DLL; only the Wine runs of
 * tests/run.sh put this one beside the test program. It answers with
 * RtlGenRandom (advapi32's SystemFunction036), Wine's own generator.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG n = length > 0x10000000 ? 0x10000000 : (ULONG)length;
    if (!SystemFunction036(data, n)) {
      return FALSE;
    }
    data += n;
    length -= n;
  }
  return TRUE;
}
