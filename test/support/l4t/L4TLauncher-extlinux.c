/** @file
  Verbatim from NVIDIA's edk2-nvidia, tag r36.5.1 (JetPack 6; commit
  3dfabbec197a7614deaa57e4782296b57290a911),
  Silicon/NVIDIA/Application/L4TLauncher/L4TLauncher.c: the four functions with which
  L4TLauncher finds the partition named APP and reads boot/extlinux/extlinux.conf
  (FindPartitionInfo, CleanExtLinuxLine, CheckCommandString, ProcessExtLinuxConfig),
  unchanged. r35.6.4 (JetPack 5) differs only in not reading OVERLAYS. The test compiles
  them against edk2-shim.h (test/support/l4t.ts) to read the boot partitions stackboot
  writes as the Jetson launcher would.

  The original file's header:

  SPDX-FileCopyrightText: Copyright (c) 2022-2025 NVIDIA CORPORATION & AFFILIATES. All rights reserved.

  SPDX-License-Identifier: BSD-2-Clause-Patent

**/

#include "edk2-shim.h"

/**
  Find the partition on the same disk as the loaded image

  Will fall back to the other bootchain if needed

  @param[in]  DeviceHandle     The handle of partition where this file lives on.
  @param[out] PartitionIndex   The partition index on the disk
  @param[out] PartitionHandle  The partition handle

  @retval EFI_SUCCESS    The operation completed successfully.
  @retval EFI_NOT_FOUND  The partition is not on the filesystem.

**/
STATIC
EFI_STATUS
EFIAPI
FindPartitionInfo (
  IN EFI_HANDLE    DeviceHandle,
  IN CONST CHAR16  *PartitionBasename,
  IN UINT32        BootChain,
  OUT UINT32       *PartitionIndex OPTIONAL,
  OUT EFI_HANDLE   *PartitionHandle OPTIONAL
  )
{
  EFI_STATUS                   Status;
  EFI_HANDLE                   *ParentHandles;
  UINTN                        ParentCount;
  UINTN                        ParentIndex;
  EFI_HANDLE                   *ChildHandles;
  UINTN                        ChildCount;
  UINTN                        ChildIndex;
  UINT32                       FoundIndex = 0;
  EFI_PARTITION_INFO_PROTOCOL  *PartitionInfo;
  EFI_HANDLE                   FoundHandle        = 0;
  EFI_HANDLE                   FoundHandleGeneric = 0;
  EFI_HANDLE                   FoundHandleAlt     = 0;
  CHAR16                       *SubString;
  UINTN                        PartitionBasenameLen;

  if (BootChain > 1) {
    return EFI_UNSUPPORTED;
  }

  if (PartitionBasename == NULL) {
    return EFI_INVALID_PARAMETER;
  }

  PartitionBasenameLen = StrnLenS (PartitionBasename, MAX_PARTITION_NAME_SIZE);

  Status = PARSE_HANDLE_DATABASE_PARENTS (DeviceHandle, &ParentCount, &ParentHandles);
  if (EFI_ERROR (Status)) {
    ErrorPrint (L"%a: Failed to find parents - %r\r\n", __FUNCTION__, Status);
    return Status;
  }

  for (ParentIndex = 0; ParentIndex < ParentCount; ParentIndex++) {
    Status = ParseHandleDatabaseForChildControllers (ParentHandles[ParentIndex], &ChildCount, &ChildHandles);
    if (EFI_ERROR (Status)) {
      ErrorPrint (L"%a: Failed to find child controllers - %r\r\n", __FUNCTION__, Status);
      return Status;
    }

    for (ChildIndex = 0; ChildIndex < ChildCount; ChildIndex++) {
      Status = gBS->HandleProtocol (ChildHandles[ChildIndex], &gEfiPartitionInfoProtocolGuid, (VOID **)&PartitionInfo);
      if (EFI_ERROR (Status)) {
        continue;
      }

      // Only GPT partitions are supported
      if (PartitionInfo->Type != PARTITION_TYPE_GPT) {
        continue;
      }

      // Look for A/B Names
      if (StrCmp (PartitionInfo->Info.Gpt.PartitionName, PartitionBasename) == 0) {
        ASSERT (FoundHandleGeneric == 0);
        FoundHandleGeneric = ChildHandles[ChildIndex];
      } else if ((PartitionBasenameLen + 2) == StrLen (PartitionInfo->Info.Gpt.PartitionName)) {
        SubString = StrStr (PartitionInfo->Info.Gpt.PartitionName, PartitionBasename);
        if (SubString != NULL) {
          // See if it is a prefix
          if ((SubString == (PartitionInfo->Info.Gpt.PartitionName + 2)) &&
              (PartitionInfo->Info.Gpt.PartitionName[1] == L'_'))
          {
            if ((PartitionInfo->Info.Gpt.PartitionName[0] == (L'A' + BootChain)) ||
                (PartitionInfo->Info.Gpt.PartitionName[0] == (L'a' + BootChain)))
            {
              ASSERT (FoundHandle == 0);
              FoundHandle = ChildHandles[ChildIndex];
            }

            if ((PartitionInfo->Info.Gpt.PartitionName[0] == (L'B' - BootChain)) ||
                (PartitionInfo->Info.Gpt.PartitionName[0] == (L'b' - BootChain)))
            {
              ASSERT (FoundHandleAlt == 0);
              FoundHandleAlt = ChildHandles[ChildIndex];
            }

            // See if it is a postfix
          } else if ((SubString == PartitionInfo->Info.Gpt.PartitionName) &&
                     (PartitionInfo->Info.Gpt.PartitionName[PartitionBasenameLen] == L'_'))
          {
            if ((PartitionInfo->Info.Gpt.PartitionName[PartitionBasenameLen + 1] == (L'a' + BootChain)) ||
                (PartitionInfo->Info.Gpt.PartitionName[PartitionBasenameLen + 1] == (L'A' + BootChain)))
            {
              ASSERT (FoundHandle == 0);
              FoundHandle = ChildHandles[ChildIndex];
            } else if ((PartitionInfo->Info.Gpt.PartitionName[PartitionBasenameLen + 1] == (L'b' - BootChain)) ||
                       (PartitionInfo->Info.Gpt.PartitionName[PartitionBasenameLen + 1] == (L'B' - BootChain)))
            {
              ASSERT (FoundHandleAlt == 0);
              FoundHandleAlt = ChildHandles[ChildIndex];
            }
          }
        }
      }
    }

    FreePool (ChildHandles);
  }

  FreePool (ParentHandles);

  if ((FoundHandle == 0) && (FoundHandleGeneric == 0) && (FoundHandleAlt == 0)) {
    return EFI_NOT_FOUND;
  } else if (FoundHandle == 0) {
    if (FoundHandleGeneric != 0) {
      FoundHandle = FoundHandleGeneric;
    } else {
      FoundHandle = FoundHandleAlt;
      Print (L"Falling back to alternative boot path\r\n");
    }
  }

  FoundIndex = LocatePartitionIndex (FoundHandle);

  if (FoundIndex == 0) {
    ErrorPrint (L"%a: Failed to find both partitions index\r\n", __FUNCTION__);
    return EFI_DEVICE_ERROR;
  }

  if (PartitionIndex != NULL) {
    *PartitionIndex = FoundIndex;
  }

  if (PartitionHandle != NULL) {
    *PartitionHandle = FoundHandle;
  }

  return EFI_SUCCESS;
}

/**
  Remove comments and leading trailing whitespace

  @param[in]  InputString

  @returns   Cleaned string

**/
STATIC
CHAR16 *
EFIAPI
CleanExtLinuxLine (
  IN CHAR16  *InputString
  )
{
  CHAR16  *CurrentString;
  CHAR16  *EndSearch;
  CHAR16  *LastNonSpace;

  // Remove any comments
  CurrentString = StrStr (InputString, L"#");
  if (CurrentString != NULL) {
    *CurrentString = CHAR_NULL;
  }

  CurrentString = InputString;
  while ((*CurrentString == L' ') ||
         (*CurrentString == L'\t'))
  {
    CurrentString++;
  }

  LastNonSpace = CurrentString;
  EndSearch    = CurrentString;
  if (*LastNonSpace != CHAR_NULL) {
    while (*EndSearch != CHAR_NULL) {
      if ((*EndSearch != L' ') &&
          (*EndSearch != L'\t'))
      {
        LastNonSpace = EndSearch;
      }

      EndSearch++;
    }

    LastNonSpace[1] = CHAR_NULL;
  }

  return CurrentString;
}

STATIC
EFI_STATUS
EFIAPI
CheckCommandString (
  IN CHAR16        *CommandLine,
  IN CONST CHAR16  *Key,
  OUT CHAR16       **Buffer
  )
{
  CHAR16  *Value;

  if (StrnCmp (CommandLine, Key, StrLen (Key)) == 0) {
    Value = CleanExtLinuxLine (CommandLine + StrLen (Key));
    if (Buffer != NULL) {
      *Buffer = AllocateCopyPool (StrSize (Value), Value);
      if (*Buffer == NULL) {
        return EFI_OUT_OF_RESOURCES;
      }
    }

    return EFI_SUCCESS;
  }

  return EFI_NOT_FOUND;
}

/**
  Process the extlinux.conf file

  @param[in]  DeviceHandle     The handle of partition where this file lives on.
  @param[in]  BootChain        Numeric version of the chain
  @param[out] ExtLinuxConfig   Pointer to an extlinux config object
  @param[out] RootFsHandle     Pointer to the handle of the device tree

  @retval EFI_SUCCESS    The operation completed successfully.

**/
STATIC
EFI_STATUS
EFIAPI
ProcessExtLinuxConfig (
  IN EFI_HANDLE             DeviceHandle,
  IN UINT32                 BootChain,
  OUT EXTLINUX_BOOT_CONFIG  *BootConfig,
  OUT EFI_HANDLE            *RootFsHandle
  )
{
  EFI_STATUS       Status;
  EFI_FILE_HANDLE  FileHandle;
  CHAR16           *FileLine = NULL;
  CHAR16           *CleanLine;
  CHAR16           *DefaultLabel = NULL;
  CHAR16           *Timeout      = NULL;
  CHAR16           *CbootArg     = NULL;
  CHAR16           *PostCbootArg = NULL;
  BOOLEAN          Ascii;
  UINTN            Index;

  ZeroMem (BootConfig, sizeof (EXTLINUX_BOOT_CONFIG));

  if (RootFsHandle == NULL) {
    return EFI_INVALID_PARAMETER;
  }

  Status = FindPartitionInfo (DeviceHandle, ROOTFS_BASE_NAME, BootChain, NULL, RootFsHandle);
  if (EFI_ERROR (Status)) {
    ErrorPrint (L"%a: Unable to find partition info\r\n", __FUNCTION__);
    return Status;
  }

  Status = OpenAndReadFileToBuffer (
             *RootFsHandle,
             EXTLINUX_CONF_PATH,
             &FileHandle,
             NULL,
             NULL
             );
  if (EFI_ERROR (Status)) {
    ErrorPrint (L"%a:sds Failed to Authenticate %s (%r)\r\n", __FUNCTION__, EXTLINUX_CONF_PATH, Status);
    return Status;
  }

  while (!FileHandleEof (FileHandle)) {
    if (FileLine != NULL) {
      FreePool (FileLine);
      FileLine = NULL;
    }

    FileLine = FileHandleReturnLine (FileHandle, &Ascii);
    if (FileLine == NULL) {
      break;
    }

    CleanLine = CleanExtLinuxLine (FileLine);
    if (*CleanLine != CHAR_NULL) {
      Status = CheckCommandString (CleanLine, EXTLINUX_KEY_TIMEOUT, &Timeout);
      if (!EFI_ERROR (Status)) {
        BootConfig->Timeout = StrDecimalToUintn (Timeout);
        FreePool (Timeout);
        Timeout = NULL;
        continue;
      }

      Status = CheckCommandString (CleanLine, EXTLINUX_KEY_DEFAULT, &DefaultLabel);
      if (!EFI_ERROR (Status)) {
        continue;
      }

      Status = CheckCommandString (CleanLine, EXTLINUX_KEY_MENU_TITLE, &BootConfig->MenuTitle);
      if (!EFI_ERROR (Status)) {
        continue;
      }

      if (BootConfig->NumberOfBootOptions < MAX_EXTLINUX_OPTIONS) {
        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_LABEL, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions].Label);
        if (!EFI_ERROR (Status)) {
          BootConfig->NumberOfBootOptions++;
          continue;
        }
      }

      if ((BootConfig->NumberOfBootOptions <= MAX_EXTLINUX_OPTIONS) &&
          (BootConfig->NumberOfBootOptions != 0))
      {
        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_MENU_LABEL, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].MenuLabel);
        if (!EFI_ERROR (Status)) {
          continue;
        }

        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_LINUX, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].LinuxPath);
        if (!EFI_ERROR (Status)) {
          continue;
        }

        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_INITRD, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].InitrdPath);
        if (!EFI_ERROR (Status)) {
          continue;
        }

        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_FDT, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].DtbPath);
        if (!EFI_ERROR (Status)) {
          continue;
        }

        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_OVERLAYS, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].Overlays);
        if (!EFI_ERROR (Status)) {
          continue;
        }

        Status = CheckCommandString (CleanLine, EXTLINUX_KEY_APPEND, &BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].BootArgs);
        if (!EFI_ERROR (Status)) {
          CbootArg = StrStr (BootConfig->BootOptions[BootConfig->NumberOfBootOptions-1].BootArgs, EXTLINUX_CBOOT_ARG);
          if (CbootArg != NULL) {
            PostCbootArg = CbootArg + StrLen (EXTLINUX_CBOOT_ARG);
            while (*PostCbootArg == L' ') {
              PostCbootArg++;
            }

            CopyMem (CbootArg, PostCbootArg, StrSize (PostCbootArg));
          }

          continue;
        }
      }
    }
  }

  if (FileLine != NULL) {
    FreePool (FileLine);
    FileLine = NULL;
  }

  FileHandleClose (FileHandle);

  if (DefaultLabel != NULL) {
    for (Index = 0; Index < BootConfig->NumberOfBootOptions; Index++) {
      if (StrCmp (DefaultLabel, BootConfig->BootOptions[Index].Label) == 0) {
        BootConfig->DefaultBootEntry = Index;
        break;
      }
    }
  }

  for (Index = 0; Index < BootConfig->NumberOfBootOptions; Index++) {
    if (BootConfig->BootOptions[Index].DtbPath != NULL) {
      PathCleanUpDirectories (BootConfig->BootOptions[Index].DtbPath);
    }

    if (BootConfig->BootOptions[Index].InitrdPath != NULL) {
      PathCleanUpDirectories (BootConfig->BootOptions[Index].InitrdPath);
    }

    if (BootConfig->BootOptions[Index].LinuxPath != NULL) {
      PathCleanUpDirectories (BootConfig->BootOptions[Index].LinuxPath);
    }

    if (BootConfig->BootOptions[Index].Overlays != NULL) {
      PathCleanUpDirectories (BootConfig->BootOptions[Index].Overlays);
    }
  }

  if (BootConfig->NumberOfBootOptions == 0) {
    return EFI_NOT_FOUND;
  } else {
    return EFI_SUCCESS;
  }
}
