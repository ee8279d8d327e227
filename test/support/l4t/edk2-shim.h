/*
 * Just enough of EDK2 (MdePkg, ShellPkg) and of L4TLauncher.h to compile NVIDIA's
 * extlinux reader (L4TLauncher-extlinux.c) as a host program, with -fshort-wchar so that
 * L"" strings are CHAR16 as in UEFI. The firmware's services become a tiny disk model:
 * one disk, its GPT partitions (names given on the command line), and the files of one of
 * them (a host folder). The constants below are copied from edk2-nvidia r36.5.1's
 * L4TLauncher.h; the library functions do what their EDK2 counterparts document.
 */
#ifndef EDK2_SHIM_H
#define EDK2_SHIM_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>

typedef uint16_t CHAR16;
typedef unsigned char BOOLEAN;
typedef uint32_t UINT32;
typedef uint64_t UINT64;
typedef size_t UINTN;
typedef void VOID;
typedef UINTN EFI_STATUS;
typedef void *EFI_HANDLE;
typedef FILE *EFI_FILE_HANDLE;
typedef struct { int unused; } EFI_GUID;

#define IN
#define OUT
#define OPTIONAL
#define CONST const
#define STATIC static
#define EFIAPI
#define TRUE 1
#define FALSE 0
#define CHAR_NULL 0

#define EFI_ERR(n) ((EFI_STATUS)1 << (sizeof(EFI_STATUS) * 8 - 1) | (n))
#define EFI_SUCCESS 0
#define EFI_INVALID_PARAMETER EFI_ERR(2)
#define EFI_UNSUPPORTED EFI_ERR(3)
#define EFI_DEVICE_ERROR EFI_ERR(7)
#define EFI_OUT_OF_RESOURCES EFI_ERR(9)
#define EFI_NOT_FOUND EFI_ERR(14)
#define EFI_ERROR(s) (((EFI_STATUS)(s)) >> (sizeof(EFI_STATUS) * 8 - 1))

#define ASSERT(x) do { if (!(x)) { fprintf(stderr, "ASSERT failed: %s\n", #x); exit(3); } } while (0)

/* from L4TLauncher.h (r36.5.1) */
#define EXTLINUX_CONF_PATH  L"boot\\extlinux\\extlinux.conf"
#define MAX_PARTITION_NAME_SIZE  36
#define ROOTFS_BASE_NAME        L"APP"
#define EXTLINUX_KEY_TIMEOUT     L"TIMEOUT"
#define EXTLINUX_KEY_DEFAULT     L"DEFAULT"
#define EXTLINUX_KEY_MENU_TITLE  L"MENU TITLE"
#define EXTLINUX_KEY_LABEL       L"LABEL"
#define EXTLINUX_KEY_MENU_LABEL  L"MENU LABEL"
#define EXTLINUX_KEY_LINUX       L"LINUX"
#define EXTLINUX_KEY_INITRD      L"INITRD"
#define EXTLINUX_KEY_FDT         L"FDT"
#define EXTLINUX_KEY_APPEND      L"APPEND"
#define EXTLINUX_KEY_OVERLAYS    L"OVERLAYS"
#define EXTLINUX_CBOOT_ARG  L"${cbootargs}"
#define MAX_EXTLINUX_OPTIONS  10

typedef struct {
  CHAR16    *Label;
  CHAR16    *MenuLabel;
  CHAR16    *LinuxPath;
  CHAR16    *DtbPath;
  CHAR16    *InitrdPath;
  CHAR16    *BootArgs;
  CHAR16    *Overlays;
} EXTLINUX_BOOT_OPTION;

typedef struct {
  UINT32                  DefaultBootEntry;
  CHAR16                  *MenuTitle;
  EXTLINUX_BOOT_OPTION    BootOptions[MAX_EXTLINUX_OPTIONS];
  UINT32                  NumberOfBootOptions;
  UINT32                  Timeout;
} EXTLINUX_BOOT_CONFIG;

/* MdePkg Protocol/PartitionInfo.h, reduced to what the reader looks at */
#define PARTITION_TYPE_GPT 0x02
typedef struct { CHAR16 PartitionName[MAX_PARTITION_NAME_SIZE]; } EFI_PARTITION_ENTRY;
typedef struct {
  UINT32 Revision;
  UINT32 Type;
  union { EFI_PARTITION_ENTRY Gpt; } Info;
} EFI_PARTITION_INFO_PROTOCOL;

extern EFI_GUID gEfiPartitionInfoProtocolGuid;
typedef struct {
  EFI_STATUS (*HandleProtocol)(EFI_HANDLE Handle, EFI_GUID *Protocol, VOID **Interface);
} EFI_BOOT_SERVICES;
extern EFI_BOOT_SERVICES *gBS;

/* BaseLib / MemoryAllocationLib / BaseMemoryLib */
UINTN StrLen(CONST CHAR16 *s);
UINTN StrSize(CONST CHAR16 *s);
UINTN StrnLenS(CONST CHAR16 *s, UINTN max);
int StrCmp(CONST CHAR16 *a, CONST CHAR16 *b);
int StrnCmp(CONST CHAR16 *a, CONST CHAR16 *b, UINTN n);
CHAR16 *StrStr(CONST CHAR16 *s, CONST CHAR16 *sub);
UINTN StrDecimalToUintn(CONST CHAR16 *s);
CHAR16 *PathCleanUpDirectories(CHAR16 *path);
VOID *AllocateCopyPool(UINTN n, CONST VOID *src);
VOID FreePool(VOID *p);
VOID *ZeroMem(VOID *p, UINTN n);
VOID *CopyMem(VOID *d, CONST VOID *s, UINTN n);

/* ShellPkg FileHandleLib, UefiLib, HandleParsingLib */
BOOLEAN FileHandleEof(EFI_FILE_HANDLE h);
CHAR16 *FileHandleReturnLine(EFI_FILE_HANDLE h, BOOLEAN *Ascii);
EFI_STATUS FileHandleClose(EFI_FILE_HANDLE h);
UINTN ErrorPrint(CONST CHAR16 *fmt, ...);
UINTN Print(CONST CHAR16 *fmt, ...);
EFI_STATUS PARSE_HANDLE_DATABASE_PARENTS(EFI_HANDLE h, UINTN *count, EFI_HANDLE **parents);
EFI_STATUS ParseHandleDatabaseForChildControllers(EFI_HANDLE h, UINTN *count, EFI_HANDLE **children);

/* L4TLauncher.c, outside the functions taken */
UINT32 LocatePartitionIndex(EFI_HANDLE h);
EFI_STATUS OpenAndReadFileToBuffer(CONST EFI_HANDLE PartitionHandle, CONST CHAR16 *CONST FileName, EFI_FILE_HANDLE *CONST FileHandle, VOID **CONST FileData, UINT64 *CONST FileDataSize);
#endif
