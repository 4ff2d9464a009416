/*
 * Rust's standard library (1.78 and later) draws its random numbers on Windows from
 * ProcessPrng in bcryptprimitives.dll. The Wine in Debian's stable release (8.0) has
 * no such export, so any Rust program dies there at start. CI builds this stand-in
 * with MinGW and puts it on Wine's search path: it answers ProcessPrng with
 * BCryptGenRandom, which that Wine has. Nothing else of ceaseless's tests needs it.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) >= 0;
}
